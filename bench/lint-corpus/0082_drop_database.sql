-- @what: DROP DATABASE
-- @hazard: drop-database
-- @why: irreversible loss of a whole database
-- safe: before_deploy
-- transaction: false

drop database analytics;
