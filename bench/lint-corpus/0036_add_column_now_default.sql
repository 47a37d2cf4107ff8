-- @what: ADD COLUMN ... DEFAULT now()
-- @hazard: none
-- @why: now() is stable, evaluated once: no rewrite (verified)
-- safe: before_deploy

alter table users add column imported_at timestamptz default now();
