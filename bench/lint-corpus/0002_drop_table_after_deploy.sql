-- @what: DROP TABLE in an after_deploy migration
-- @hazard: none
-- @why: the contract step of expand/contract: the deployed code no longer uses the table
-- safe: after_deploy

drop table legacy_events;
