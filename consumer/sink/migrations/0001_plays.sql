-- The shared plays table, created only in a database that does not have one.
-- An existing discovery/api database keeps its own table, trigger and indexes
-- untouched: nothing here runs when plays already exists (even an index
-- "IF NOT EXISTS" would lock a live table of years of rows while it builds).
DO $$
BEGIN
    IF to_regclass('plays') IS NULL THEN
        CREATE TABLE plays (
            id serial PRIMARY KEY,
            user_id integer,
            source varchar,
            play_item_id integer NOT NULL,
            created_at timestamp NOT NULL DEFAULT now(),
            updated_at timestamp NOT NULL DEFAULT now(),
            slot integer,
            signature varchar,
            city varchar,
            region varchar,
            country varchar
        );
        CREATE INDEX ix_plays_user_play_item_date ON plays (user_id, play_item_id, created_at);
        CREATE INDEX ix_plays_play_item_date ON plays (play_item_id, created_at);
        CREATE INDEX ix_plays_created_at ON plays (created_at);
        CREATE INDEX ix_plays_slot ON plays (slot);
        CREATE INDEX ix_plays_sol_signature ON plays (signature);
    END IF;
END
$$;
