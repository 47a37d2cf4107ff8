-- @what: DROP COLUMN in an always migration
-- @hazard: drop-column
-- @why: an always migration may run before the deploy
-- safe: always

alter table users drop column full_name;
