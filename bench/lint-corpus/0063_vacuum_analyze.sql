-- @what: VACUUM (ANALYZE), transaction: false
-- @hazard: none
-- @why: plain VACUUM takes no blocking lock
-- safe: before_deploy
-- transaction: false

vacuum (analyze) orders;
