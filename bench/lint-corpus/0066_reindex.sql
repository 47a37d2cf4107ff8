-- @what: REINDEX INDEX without CONCURRENTLY
-- @hazard: reindex-lock
-- @why: blocks writes, and reads that use the index
-- safe: before_deploy

reindex index orders_status_idx;
