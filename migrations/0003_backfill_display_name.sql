-- Copy the old column into the new one. Harmless to either version of the code.
-- safe: always

update users set display_name = full_name where display_name is null;

-- migrate:down
-- The backfill leaves no schema behind; the rows go with the column in 0002's down.
select 1;
