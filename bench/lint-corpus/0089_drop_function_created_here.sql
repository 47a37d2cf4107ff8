-- @what: create a helper function, backfill with it, drop it (same migration)
-- @hazard: none
-- @why: the function never existed for the old code (safemigrate exempts only tables created in the
-- @why: migration)
-- safe: before_deploy

create function normalise_email_once(text) returns text language sql immutable as $$ select lower(trim($1)) $$;
update users set email = normalise_email_once(email) where email <> normalise_email_once(email);
drop function normalise_email_once(text);
