-- @what: DROP DEFAULT in an after_deploy migration
-- @hazard: none
-- @why: the deployed code always writes the column
-- safe: after_deploy

alter table users alter column status drop default;
