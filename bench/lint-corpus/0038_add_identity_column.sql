-- @what: ADD COLUMN ... GENERATED ALWAYS AS IDENTITY
-- @hazard: add-column-rewrite
-- @why: fills every existing row from the sequence: rewrite (verified)
-- safe: before_deploy

alter table legacy_events add column event_no bigint generated always as identity;
