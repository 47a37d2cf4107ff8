-- @what: ALTER VIEW ... RENAME TO
-- @hazard: rename-view
-- @why: the old code queries the view by its old name
-- safe: before_deploy

alter view active_users rename to current_users;
