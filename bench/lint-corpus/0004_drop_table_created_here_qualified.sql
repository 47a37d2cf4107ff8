-- @what: as 0003 but the DROP names it public.import_staging
-- @hazard: none
-- @why: same table as 0003: public is the default schema
-- safe: before_deploy

create table import_staging (id bigint primary key, payload jsonb);
insert into import_staging select id, to_jsonb(users) from users;
drop table public.import_staging;
