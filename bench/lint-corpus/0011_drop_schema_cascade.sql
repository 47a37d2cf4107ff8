-- @what: DROP SCHEMA ... CASCADE
-- @hazard: drop-schema
-- @why: drops every table, view and function in the schema while the old code may use them
-- safe: before_deploy

drop schema reporting cascade;
