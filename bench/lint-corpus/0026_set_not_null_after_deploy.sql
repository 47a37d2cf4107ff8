-- @what: SET NOT NULL in after_deploy, no prior check
-- @hazard: not-null-scan
-- @why: scans the whole table under ACCESS EXCLUSIVE
-- safe: after_deploy

alter table users alter column display_name set not null;
