-- @what: RENAME COLUMN in an after_deploy migration
-- @hazard: rename-column
-- @why: the deployed code must use the new name (broken until this runs) or the old one (broken after): a
-- @why: rename is unsafe in either phase
-- safe: after_deploy

alter table users rename column full_name to legal_name;
