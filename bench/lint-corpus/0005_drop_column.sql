-- @what: DROP COLUMN in a before_deploy migration
-- @hazard: drop-column
-- @why: the old code still selects the column
-- safe: before_deploy

alter table users drop column full_name;
