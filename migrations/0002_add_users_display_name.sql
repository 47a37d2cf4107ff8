-- Expand: the new code reads display_name; the old code never sees it, so this
-- is safe to add while the old code still serves traffic.
-- safe: before_deploy

alter table users add column display_name text;

-- migrate:down
alter table users drop column display_name;
