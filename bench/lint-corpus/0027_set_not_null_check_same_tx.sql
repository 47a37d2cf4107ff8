-- @what: CHECK NOT VALID + VALIDATE + SET NOT NULL, one transaction
-- @hazard: validation-lock
-- @why: ADD CONSTRAINT takes ACCESS EXCLUSIVE and keeps it to commit, so VALIDATE scans under it (verified
-- @why: in pg_locks): no better than a plain SET NOT NULL
-- safe: after_deploy

alter table users add constraint users_display_name_nn check (display_name is not null) not valid;
alter table users validate constraint users_display_name_nn;
alter table users alter column display_name set not null;
alter table users drop constraint users_display_name_nn;
