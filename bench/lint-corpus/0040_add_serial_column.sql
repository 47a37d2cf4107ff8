-- @what: ADD COLUMN bigserial
-- @hazard: add-column-rewrite, style-serial
-- @why: nextval() default for every row: rewrite
-- safe: before_deploy

alter table legacy_events add column seq bigserial;
