-- @what: CHECK NOT VALID in one migration, VALIDATE + SET NOT NULL in the next (a directory of two files)
-- @hazard: none
-- @why: (second migration of the case)
-- safe: after_deploy

alter table users validate constraint users_display_name_nn;
alter table users alter column display_name set not null;
alter table users drop constraint users_display_name_nn;
