-- Users of the app. The first release creates the table before its code ships.
-- safe: before_deploy

create table users (
  id         bigint generated always as identity primary key,
  email      text not null unique,
  full_name  text not null,
  created_at timestamptz not null default now()
);

-- migrate:down
drop table users;
