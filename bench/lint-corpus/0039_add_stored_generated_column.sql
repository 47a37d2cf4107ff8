-- @what: ADD COLUMN ... GENERATED ALWAYS AS (expr) STORED
-- @hazard: add-column-rewrite
-- @why: computes and stores the value for every row: rewrite
-- safe: before_deploy

alter table orders add column total_cents bigint generated always as (quantity * price_cents) stored;
