-- @what: DROP INDEX CONCURRENTLY in a transactional migration
-- @hazard: needs-no-tx
-- @why: PostgreSQL refuses: DROP INDEX CONCURRENTLY cannot run inside a transaction block (verified)
-- safe: before_deploy

drop index concurrently if exists orders_status_idx;
