-- @what: CREATE UNIQUE INDEX CONCURRENTLY, then ADD UNIQUE USING INDEX
-- @hazard: none
-- @why: the safe way
-- safe: before_deploy
-- transaction: false

create unique index concurrently if not exists users_email_idx on users (email);
alter table users add constraint users_email_key unique using index users_email_idx;
