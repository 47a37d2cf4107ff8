-- @what: CHECK NOT VALID + VALIDATE in one transaction
-- @hazard: validation-lock
-- @why: ACCESS EXCLUSIVE from ADD CONSTRAINT is held while VALIDATE scans (verified in pg_locks)
-- safe: before_deploy

alter table orders add constraint orders_quantity_positive check (quantity > 0) not valid;
alter table orders validate constraint orders_quantity_positive;
