-- @what: CREATE INDEX CONCURRENTLY, transaction: false
-- @hazard: none
-- @why: the safe way
-- safe: before_deploy
-- transaction: false

create index concurrently if not exists orders_created_at_idx on orders (created_at);
