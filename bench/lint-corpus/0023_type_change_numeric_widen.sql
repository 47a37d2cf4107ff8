-- @what: ALTER COLUMN TYPE numeric(10,2) -> numeric(12,2)
-- @hazard: none
-- @why: more precision at the same scale: no rewrite (verified on PG 15), every old value fits
-- safe: before_deploy

alter table orders alter column amount type numeric(12,2);
