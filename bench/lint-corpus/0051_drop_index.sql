-- @what: DROP INDEX without CONCURRENTLY
-- @hazard: drop-index-lock
-- @why: ACCESS EXCLUSIVE on orders while it waits for and drops the index (short, but queues reads behind
-- @why: long queries; lock_timeout bounds it)
-- safe: before_deploy

drop index orders_status_idx;
