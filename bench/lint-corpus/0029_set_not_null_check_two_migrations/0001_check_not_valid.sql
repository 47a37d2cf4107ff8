-- @what: CHECK NOT VALID in one migration, VALIDATE + SET NOT NULL in the next (a directory of two files)
-- @hazard: none
-- @why: the validation runs in its own transaction without a write lock; SET NOT NULL then skips the scan
-- safe: after_deploy

alter table users add constraint users_display_name_nn check (display_name is not null) not valid;
