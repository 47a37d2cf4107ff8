-- @what: ADD COLUMN nullable, no default
-- @hazard: none
-- @why: catalog-only change
-- safe: before_deploy

alter table users add column nickname text;
