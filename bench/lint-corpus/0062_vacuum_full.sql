-- @what: VACUUM FULL
-- @hazard: rewrite-maint
-- @why: rewrites the table under ACCESS EXCLUSIVE
-- safe: before_deploy
-- transaction: false

vacuum full orders;
