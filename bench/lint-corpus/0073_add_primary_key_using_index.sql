-- @what: CREATE UNIQUE INDEX CONCURRENTLY, then ADD PRIMARY KEY USING INDEX
-- @hazard: none
-- @why: the index is built without a write lock; attaching it is catalog-only (the column is already NOT
-- @why: NULL)
-- safe: before_deploy
-- transaction: false

create unique index concurrently if not exists legacy_events_id_idx on legacy_events (id);
alter table legacy_events add constraint legacy_events_pkey primary key using index legacy_events_id_idx;
