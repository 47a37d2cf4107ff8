-- @what: CREATE TABLE then CREATE INDEX CONCURRENTLY on it, transaction: false
-- @hazard: none
-- @why: allowed and harmless
-- safe: before_deploy
-- transaction: false

create table if not exists invoices (
  id bigint generated always as identity primary key,
  order_id bigint not null
);
create index concurrently if not exists invoices_order_id_idx on invoices (order_id);
