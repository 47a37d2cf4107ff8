-- @what: ADD CONSTRAINT ... UNIQUE on an existing table
-- @hazard: unique-lock
-- @why: builds the index under ACCESS EXCLUSIVE (verified in pg_locks): blocks reads and writes
-- safe: before_deploy

alter table users add constraint users_email_key unique (email);
