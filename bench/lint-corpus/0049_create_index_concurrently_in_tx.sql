-- @what: CREATE INDEX CONCURRENTLY in a transactional migration
-- @hazard: needs-no-tx
-- @why: PostgreSQL refuses: CREATE INDEX CONCURRENTLY cannot run inside a transaction block
-- safe: before_deploy

create index concurrently orders_created_at_idx on orders (created_at);
