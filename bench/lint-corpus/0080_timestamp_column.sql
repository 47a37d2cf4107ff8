-- @what: ADD COLUMN timestamp (without time zone)
-- @hazard: style-timestamp
-- @why: style: timestamptz is preferred
-- safe: before_deploy

alter table orders add column shipped_at timestamp;
