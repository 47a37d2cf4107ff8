-- @what: ADD COLUMN ... NOT NULL DEFAULT constant
-- @hazard: none
-- @why: PG 11+ stores the default in the catalog: no rewrite (verified); old INSERTs get the default
-- safe: before_deploy

alter table users add column plan text not null default 'free';
