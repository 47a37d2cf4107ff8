-- @what: DROP VIEW + CREATE VIEW (redefine) in one transaction
-- @hazard: none
-- @why: atomic replacement inside the migration's transaction; the old code keeps seeing a view with the
-- @why: columns it reads (CREATE OR REPLACE cannot drop or retype columns, hence the drop)
-- safe: before_deploy

drop view if exists active_users;
create view active_users as
  select id, email, display_name from users where status = 'active';
