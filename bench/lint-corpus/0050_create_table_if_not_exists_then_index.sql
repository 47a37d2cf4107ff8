-- @what: CREATE TABLE IF NOT EXISTS then CREATE INDEX (no CONCURRENTLY)
-- @hazard: index-lock
-- @why: IF NOT EXISTS says the table may already exist (with rows); then the index build blocks its writes
-- safe: before_deploy

create table if not exists audit_log (
  id bigint generated always as identity primary key,
  actor_id bigint,
  at timestamptz not null default now()
);
create index audit_log_actor_id_idx on audit_log (actor_id);
