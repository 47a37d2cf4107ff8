-- @what: create a table and rename it (same migration)
-- @hazard: none
-- @why: the table is new
-- safe: before_deploy

create table drafts (id bigint primary key, body text);
alter table drafts rename to documents;
