-- @what: CREATE TABLE with a bigserial key
-- @hazard: style-serial
-- @why: style: identity columns are preferred to serial
-- safe: before_deploy

create table gadgets (
  id bigserial primary key,
  name text not null
);
