-- @what: SET DEFAULT
-- @hazard: none
-- @why: catalog-only; the old code's INSERTs now get a default, which is harmless
-- safe: before_deploy

alter table users alter column status set default 'active';
