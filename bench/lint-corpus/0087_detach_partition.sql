-- @what: DETACH PARTITION without CONCURRENTLY
-- @hazard: detach-lock
-- @why: ACCESS EXCLUSIVE on the partitioned table (PG 14+ has DETACH ... CONCURRENTLY)
-- safe: before_deploy

alter table events detach partition events_2023;
