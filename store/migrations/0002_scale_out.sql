-- oxc's schema, version 2: what several processes on one database share.

-- Real-time events, so that one published in any process reaches listeners
-- in every other (each process follows the table through LISTEN/NOTIFY), and
-- a client resumes from its cursor whichever process it reconnects to. Ids
-- come from ``event_log.last_id``, taken under its row lock, so they have no
-- gaps and become visible in order. The oldest rows are pruned.
CREATE TABLE events (
    id bigint PRIMARY KEY,
    type text COLLATE "C" NOT NULL,
    data json NOT NULL,
    audience text[] COLLATE "C",             -- user ids; NULL: everyone
    chat_id text COLLATE "C",
    at double precision NOT NULL
);
-- One row: the newest event id, and the epoch that names this log in cursors
-- (a cursor from another database is refused, not misread).
CREATE TABLE event_log (
    epoch text NOT NULL,
    last_id bigint NOT NULL
);
INSERT INTO event_log (epoch, last_id) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 8), 0);

-- Blob files written but not yet referred to by a committed attachment. A
-- process deleting the last attachment of some bytes leaves the file while a
-- recent pin names it, whichever process wrote it (both sides take an
-- advisory lock on the digest).
CREATE TABLE blob_pins (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest text COLLATE "C" NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX blob_pins_digest ON blob_pins (digest, created_at);
