-- @what: ADD CHECK without NOT VALID
-- @hazard: validation-lock
-- @why: scans orders under ACCESS EXCLUSIVE
-- safe: before_deploy

alter table orders add constraint orders_quantity_positive check (quantity > 0);
