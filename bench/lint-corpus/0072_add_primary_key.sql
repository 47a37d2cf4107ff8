-- @what: ADD PRIMARY KEY on an existing table
-- @hazard: pk-lock
-- @why: builds a unique index and checks NOT NULL under ACCESS EXCLUSIVE: blocks reads and writes
-- safe: before_deploy

alter table legacy_events add primary key (id);
