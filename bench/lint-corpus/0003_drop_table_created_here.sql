-- @what: create a staging table, use it, drop it (same migration)
-- @hazard: none
-- @why: the table never existed for the old code
-- safe: before_deploy

create table import_staging (id bigint primary key, payload jsonb);
insert into import_staging select id, to_jsonb(users) from users;
drop table import_staging;
