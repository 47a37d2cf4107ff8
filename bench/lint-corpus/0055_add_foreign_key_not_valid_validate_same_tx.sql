-- @what: FK NOT VALID + VALIDATE in one transaction
-- @hazard: validation-lock
-- @why: the SHARE ROW EXCLUSIVE locks of ADD CONSTRAINT are held to commit, so VALIDATE scans under them:
-- @why: same blocking as without NOT VALID
-- safe: before_deploy

alter table orders add constraint orders_user_id_fkey foreign key (user_id) references users (id) not valid;
alter table orders validate constraint orders_user_id_fkey;
