-- @what: ADD COLUMN ... NOT NULL without a default (before_deploy)
-- @hazard: required-column
-- @why: the old code's INSERTs do not name it; on a non-empty table the statement fails anyway
-- safe: before_deploy

alter table users add column tenant_id bigint not null;
