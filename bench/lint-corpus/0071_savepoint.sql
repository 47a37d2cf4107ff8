-- @what: SAVEPOINT / RELEASE SAVEPOINT inside a transactional migration
-- @hazard: none
-- @why: a savepoint nests inside the migration's transaction; nothing commits early (verified)
-- safe: before_deploy

savepoint before_nickname;
alter table users add column nickname text;
release savepoint before_nickname;
