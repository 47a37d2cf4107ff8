-- @what: BEGIN ... COMMIT in a transaction: false migration
-- @hazard: none
-- @why: the migration manages its own transaction, statement by statement
-- safe: before_deploy
-- transaction: false

begin;
alter table users add column nickname text;
alter table users add column bio text;
commit;
