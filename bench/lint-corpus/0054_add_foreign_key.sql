-- @what: ADD FOREIGN KEY without NOT VALID
-- @hazard: validation-lock
-- @why: scans orders under SHARE ROW EXCLUSIVE on orders and users (blocks writes to both)
-- safe: before_deploy

alter table orders add constraint orders_user_id_fkey foreign key (user_id) references users (id);
