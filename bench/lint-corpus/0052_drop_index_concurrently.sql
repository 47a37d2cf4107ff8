-- @what: DROP INDEX CONCURRENTLY, transaction: false
-- @hazard: none
-- @why: the safe way
-- safe: before_deploy
-- transaction: false

drop index concurrently if exists orders_status_idx;
