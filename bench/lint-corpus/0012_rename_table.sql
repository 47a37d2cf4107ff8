-- @what: RENAME TABLE
-- @hazard: rename-table
-- @why: the old code uses the old name
-- safe: before_deploy

alter table orders rename to purchases;
