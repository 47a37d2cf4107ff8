-- @what: CHECK NOT VALID + VALIDATE, transaction: false
-- @hazard: none
-- @why: each commits on its own; VALIDATE takes only SHARE UPDATE EXCLUSIVE
-- safe: before_deploy
-- transaction: false

alter table orders add constraint orders_quantity_positive check (quantity > 0) not valid;
alter table orders validate constraint orders_quantity_positive;
