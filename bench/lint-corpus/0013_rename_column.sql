-- @what: RENAME COLUMN
-- @hazard: rename-column
-- @why: the old code uses the old name
-- safe: before_deploy

alter table users rename column full_name to legal_name;
