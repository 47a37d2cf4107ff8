-- @what: DROP NOT NULL in a before_deploy migration
-- @hazard: drop-not-null
-- @why: the expand step for a column that becomes optional; the old code may then read NULLs the new code
-- @why: writes
-- safe: before_deploy

alter table users alter column phone drop not null;
