-- @what: create a table and change a column type (same migration)
-- @hazard: none
-- @why: the table is new
-- safe: before_deploy

create table drafts (id bigint primary key, words bigint);
alter table drafts alter column words type numeric;
