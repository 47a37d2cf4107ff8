-- @what: CREATE INDEX on an existing table
-- @hazard: index-lock
-- @why: SHARE lock: blocks every write to orders until the index is built
-- safe: before_deploy

create index orders_created_at_idx on orders (created_at);
