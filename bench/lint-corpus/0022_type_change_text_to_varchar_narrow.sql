-- @what: ALTER COLUMN TYPE text -> varchar(8)
-- @hazard: type-change-phase, type-change-rewrite, style-varchar
-- @why: rewrites the table (verified); the old code may write longer codes, which are then rejected
-- safe: before_deploy

alter table orders alter column coupon_code type varchar(8);
