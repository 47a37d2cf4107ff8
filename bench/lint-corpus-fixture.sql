-- Tables the lint corpus (bench/lint-corpus/) assumes exist, for running its cases
-- on a scratch database (not needed by compare-squawk.ts, which only lints):
--   createdb scratch && psql -d scratch -f bench/lint-corpus-fixture.sql
--   bun safemigrate.ts --all --no-lint --dir <a copy of one case> --database-url postgres://.../scratch

create table users (id bigint generated always as identity primary key, email varchar(255), display_name text, full_name text, phone text not null, status text default 'active');
create table teams (id bigint primary key);
create table orders (id bigint primary key, user_id bigint, status text, quantity integer, price_cents bigint, created_at timestamptz, notes varchar(2000), external_ref bigint, coupon_code text, amount numeric(10,2));
create index orders_status_idx on orders (status);
create table legacy_events (id bigint not null, payload text);
create view active_users as select id, display_name, status from users where status = 'active';
create function order_total(bigint) returns bigint language sql as 'select 1::bigint';
create schema reporting; create table reporting.daily (d date);
create domain positive_amount as numeric;
create table events (id bigint, at date) partition by range (at);
create table events_2023 partition of events for values from ('2023-01-01') to ('2024-01-01');
insert into users (email, display_name, full_name, phone, status) select 'u'||g||'@x', 'd'||g, 'f'||g, 'p', case when g%2=0 then 'active' end from generate_series(1,100) g;
insert into teams values (1);
insert into orders select g, 1, 'new', 1, 100, now(), 'n', g, 'c', 1 from generate_series(1,100) g;
insert into legacy_events select g, 'x' from generate_series(1,100) g;
