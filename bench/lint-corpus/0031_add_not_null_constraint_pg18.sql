-- @what: PG 18 syntax: ADD CONSTRAINT ... NOT NULL col
-- @hazard: not-null-phase, not-null-scan
-- @why: same effect as SET NOT NULL: a full scan under ACCESS EXCLUSIVE, and the old code's NULL writes fail
-- safe: before_deploy

alter table users add constraint users_display_name_nn not null display_name;
