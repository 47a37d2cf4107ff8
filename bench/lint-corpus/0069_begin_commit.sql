-- @what: BEGIN ... COMMIT inside a transactional migration
-- @hazard: tx-control
-- @why: COMMIT ends safemigrate's transaction early: half the migration commits
-- safe: before_deploy

begin;
alter table users add column nickname text;
commit;
