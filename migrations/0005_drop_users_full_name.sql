-- Contract: the old code still selects full_name, so this may only run once the
-- new code is live. --all applies it right after the deploy; if nobody runs
-- --all, a --pre seven days after it was first seen picks it up.
-- safe: after_deploy
-- delay: 7d

alter table users drop column full_name;

-- migrate:down
alter table users add column full_name text;
update users set full_name = coalesce(display_name, email);
alter table users alter column full_name set not null;
