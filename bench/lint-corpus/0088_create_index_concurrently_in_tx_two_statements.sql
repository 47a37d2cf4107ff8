-- @what: as 0049, with a second statement in the migration
-- @hazard: needs-no-tx
-- @why: PostgreSQL refuses CONCURRENTLY inside safemigrate's transaction, whatever else the migration holds
-- safe: before_deploy

alter table orders add column archived_at timestamptz;
create index concurrently orders_archived_at_idx on orders (archived_at);
