-- @what: FK NOT VALID + VALIDATE, transaction: false
-- @hazard: none
-- @why: each commits on its own; VALIDATE takes only SHARE UPDATE EXCLUSIVE
-- safe: before_deploy
-- transaction: false

alter table orders add constraint orders_user_id_fkey foreign key (user_id) references users (id) not valid;
alter table orders validate constraint orders_user_id_fkey;
