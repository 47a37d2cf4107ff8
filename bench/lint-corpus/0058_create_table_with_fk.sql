-- @what: CREATE TABLE with a FOREIGN KEY to an existing table
-- @hazard: none
-- @why: no rows to check; a brief SHARE ROW EXCLUSIVE on users
-- safe: before_deploy

create table user_notes (
  id bigint generated always as identity primary key,
  user_id bigint not null references users (id),
  body text not null
);
