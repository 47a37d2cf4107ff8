-- @what: ALTER COLUMN TYPE text -> enum
-- @hazard: type-change-phase, type-change-rewrite
-- @why: the old code may write a status the enum rejects; the change rewrites orders
-- safe: before_deploy

create type order_status as enum ('new', 'paid', 'shipped');
alter table orders alter column status type order_status using status::order_status;
