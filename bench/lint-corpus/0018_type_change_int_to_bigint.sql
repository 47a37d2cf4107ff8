-- @what: ALTER COLUMN TYPE integer -> bigint
-- @hazard: type-change-phase, type-change-rewrite
-- @why: rewrites the table (verified: relfilenode changes); writes stay valid, but reads change: node-
-- @why: postgres and postgres.js decode int8 as a string where int4 was a number
-- safe: before_deploy

alter table orders alter column quantity type bigint;
