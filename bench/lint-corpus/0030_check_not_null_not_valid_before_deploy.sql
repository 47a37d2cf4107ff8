-- @what: CHECK (col IS NOT NULL) NOT VALID in a before_deploy migration
-- @hazard: not-null-phase
-- @why: NOT VALID skips only existing rows: from now on every INSERT/UPDATE of the old code that leaves
-- @why: display_name NULL fails, exactly like SET NOT NULL
-- safe: before_deploy

alter table users add constraint users_display_name_nn check (display_name is not null) not valid;
