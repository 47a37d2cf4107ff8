-- @what: ALTER COLUMN TYPE varchar(255) -> varchar(320)
-- @hazard: style-varchar
-- @why: no rewrite and no scan (verified on PG 15); every value the old code writes still fits
-- safe: before_deploy

alter table users alter column email type varchar(320);
