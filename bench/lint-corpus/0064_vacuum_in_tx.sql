-- @what: plain VACUUM ANALYZE in a transactional migration
-- @hazard: needs-no-tx
-- @why: PostgreSQL refuses: VACUUM cannot run inside a transaction block (verified)
-- safe: before_deploy

vacuum analyze orders;
