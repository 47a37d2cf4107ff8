-- @what: ADD COLUMN varchar(50)
-- @hazard: style-varchar
-- @why: style: a later length change takes a lock; text + CHECK is preferred
-- safe: before_deploy

alter table users add column nickname varchar(50);
