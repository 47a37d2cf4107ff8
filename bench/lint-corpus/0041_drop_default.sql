-- @what: DROP DEFAULT in a before_deploy migration
-- @hazard: drop-default
-- @why: the old code's INSERTs rely on the default
-- safe: before_deploy

alter table users alter column status drop default;
