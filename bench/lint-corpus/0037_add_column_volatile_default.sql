-- @what: ADD COLUMN ... DEFAULT gen_random_uuid()
-- @hazard: add-column-rewrite
-- @why: a volatile default is computed per row: the table is rewritten under ACCESS EXCLUSIVE
-- safe: before_deploy

alter table users add column public_id uuid default gen_random_uuid();
