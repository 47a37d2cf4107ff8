-- @what: TRUNCATE ... CASCADE
-- @hazard: truncate-cascade
-- @why: also empties every table with a foreign key to it
-- safe: before_deploy

truncate orders cascade;
