-- @what: CREATE UNIQUE INDEX on an existing table
-- @hazard: index-lock
-- @why: same lock as any CREATE INDEX
-- safe: before_deploy

create unique index users_email_lower_idx on users (lower(email));
