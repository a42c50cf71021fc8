-- oxc's schema, version 4: attempts counted per key within a window (failed
-- logins, requests for a code), so that every process on the database shares
-- one count. ``count_attempt`` counts and reads in one upsert. A key is an
-- HMAC, never the username or address it stands for. Rows whose window ended
-- are swept now and then.
CREATE TABLE attempts (
    key text COLLATE "C" PRIMARY KEY,
    count integer NOT NULL,
    window_ends double precision NOT NULL
);
CREATE INDEX attempts_window_ends ON attempts (window_ends);
