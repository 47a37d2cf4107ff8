-- @what: SET NOT NULL in a before_deploy migration
-- @hazard: not-null-phase, not-null-scan
-- @why: the old code may still write NULL; the check scans users under ACCESS EXCLUSIVE
-- safe: before_deploy

alter table users alter column display_name set not null;
