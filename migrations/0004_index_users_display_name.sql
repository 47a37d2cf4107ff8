-- Build the index without blocking writes: CREATE INDEX CONCURRENTLY cannot run
-- inside a transaction, so this migration runs statement by statement.
-- safe: before_deploy
-- transaction: false

create index concurrently if not exists users_display_name_idx on users (display_name);

-- migrate:down
-- transaction: false
drop index concurrently if exists users_display_name_idx;
