-- @what: ALTER COLUMN TYPE varchar(2000) -> text
-- @hazard: none
-- @why: binary-coercible: no rewrite (verified); text accepts everything varchar did
-- safe: before_deploy

alter table orders alter column notes type text;
