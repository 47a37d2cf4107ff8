-- @what: ADD COLUMN ... NOT NULL without a default (after_deploy)
-- @hazard: required-column
-- @why: on a table with rows it fails outright (column contains null values), whatever the phase
-- safe: after_deploy

alter table users add column tenant_id bigint not null;
