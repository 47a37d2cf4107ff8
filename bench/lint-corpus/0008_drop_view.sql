-- @what: DROP VIEW
-- @hazard: drop-view
-- @why: the old code may query the view
-- safe: before_deploy

drop view active_users;
