-- @what: DROP COLUMN in an after_deploy migration
-- @hazard: none
-- @why: the contract step: the deployed code no longer reads or writes the column
-- safe: after_deploy

alter table users drop column full_name;
