-- @what: CREATE TABLE then CREATE INDEX on it (same migration)
-- @hazard: none
-- @why: the table is empty and nobody else can see it yet
-- safe: before_deploy

create table invoices (
  id bigint generated always as identity primary key,
  order_id bigint not null,
  issued_at timestamptz not null default now()
);
create index invoices_order_id_idx on invoices (order_id);
