-- @what: DROP TABLE of an existing table
-- @hazard: drop-table
-- @why: the old code still serving traffic may read the table
-- safe: before_deploy

drop table legacy_events;
