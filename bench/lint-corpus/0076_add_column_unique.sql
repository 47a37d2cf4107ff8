-- @what: ADD COLUMN ... UNIQUE
-- @hazard: unique-lock
-- @why: the new column is all NULL but the unique index is still built over every row under ACCESS EXCLUSIVE
-- safe: before_deploy

alter table users add column handle text unique;
