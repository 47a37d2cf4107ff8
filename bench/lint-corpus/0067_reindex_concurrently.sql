-- @what: REINDEX INDEX CONCURRENTLY, transaction: false
-- @hazard: none
-- @why: the safe way
-- safe: before_deploy
-- transaction: false

reindex index concurrently orders_status_idx;
