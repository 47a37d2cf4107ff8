-- @what: CREATE TABLE with an integer identity key
-- @hazard: style-int
-- @why: style: int keys run out at 2^31
-- safe: before_deploy

create table widgets (
  id integer generated always as identity primary key,
  name text not null
);
