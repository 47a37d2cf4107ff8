-- @what: ALTER COLUMN TYPE bigint -> text
-- @hazard: type-change-phase, type-change-rewrite
-- @why: rewrites the table (verified) although the target is text; the old code reads strings where it read
-- @why: numbers
-- safe: before_deploy

alter table orders alter column external_ref type text;
