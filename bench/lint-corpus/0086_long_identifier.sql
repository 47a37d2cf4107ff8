-- @what: an index name longer than 63 bytes
-- @hazard: identifier-too-long
-- @why: PostgreSQL silently truncates it; a later migration naming it in full misses
-- safe: before_deploy

create table shipments (id bigint generated always as identity primary key, carrier_reference text);
create index shipments_carrier_reference_lookup_for_the_customer_support_dashboard_idx on shipments (carrier_reference);
