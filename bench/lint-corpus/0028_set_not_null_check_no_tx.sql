-- @what: CHECK NOT VALID + VALIDATE + SET NOT NULL, transaction: false
-- @hazard: none
-- @why: each statement commits on its own: VALIDATE holds only SHARE UPDATE EXCLUSIVE, SET NOT NULL skips
-- @why: the scan (PG 12+)
-- safe: after_deploy
-- transaction: false

alter table users add constraint users_display_name_nn check (display_name is not null) not valid;
alter table users validate constraint users_display_name_nn;
alter table users alter column display_name set not null;
alter table users drop constraint users_display_name_nn;
