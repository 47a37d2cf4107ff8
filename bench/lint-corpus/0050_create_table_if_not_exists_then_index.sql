-- @what: CREATE TABLE IF NOT EXISTS then CREATE INDEX (no CONCURRENTLY)
-- @hazard: none
-- @why: no earlier migration created audit_log, so IF NOT EXISTS creates it here and the index is built on an empty table (on real histories this is the common case: 154 of Sourcegraph's 276 index findings were this pattern; a table an earlier migration created is still flagged)
-- safe: before_deploy

create table if not exists audit_log (
  id bigint generated always as identity primary key,
  actor_id bigint,
  at timestamptz not null default now()
);
create index audit_log_actor_id_idx on audit_log (actor_id);
