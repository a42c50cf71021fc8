-- oxc's schema, version 1: one table per store table of the JSON backend.
--
-- Every record is kept whole in ``data`` (json, not jsonb, so a record comes
-- back with its keys in the order they were written); the columns beside it
-- are copies of the fields that queries filter or sort on, each with the
-- index its query needs. Identifiers and lookup keys use the "C" collation,
-- so they sort by code point as Python's strings do.

-- One rising number shared by 0xC messages, chat messages, chats and notifications.
CREATE SEQUENCE oxc_seq AS bigint;

CREATE TABLE users (
    id text COLLATE "C" PRIMARY KEY,
    username_key text COLLATE "C" NOT NULL,  -- the username, case-folded
    email_key text COLLATE "C",              -- the e-mail address, case-folded; NULL when none
    data json NOT NULL,
    CONSTRAINT users_username_unique UNIQUE (username_key),
    CONSTRAINT users_email_unique UNIQUE (email_key)
);

-- 0xC's public and private messages.
CREATE TABLE messages (
    id text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL UNIQUE,
    user_id text COLLATE "C" NOT NULL,
    recipient_id text COLLATE "C",           -- NULL: public
    data json NOT NULL
);
CREATE INDEX messages_public ON messages (seq) WHERE recipient_id IS NULL;
CREATE INDEX messages_sent ON messages (user_id, seq);
CREATE INDEX messages_private_sent ON messages (user_id, seq) WHERE recipient_id IS NOT NULL;
CREATE INDEX messages_received ON messages (recipient_id, seq) WHERE recipient_id IS NOT NULL;

-- Refresh-token families.
CREATE TABLE sessions (
    id text COLLATE "C" PRIMARY KEY,
    user_id text COLLATE "C" NOT NULL,
    token_hash text COLLATE "C" NOT NULL,
    data json NOT NULL
);
CREATE INDEX sessions_token_hash ON sessions (token_hash);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE chats (
    id text COLLATE "C" PRIMARY KEY,
    seq bigint NOT NULL UNIQUE,
    type text NOT NULL,
    pair_key text COLLATE "C",               -- direct chats: "first|second", sorted
    activity bigint NOT NULL,                -- the seq of the newest message, else the chat's own
    data json NOT NULL,
    CONSTRAINT chats_pair_unique UNIQUE (pair_key)
);

-- ``position`` keeps a chat's members in the order they joined.
CREATE TABLE members (
    chat_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    position bigint GENERATED ALWAYS AS IDENTITY,
    data json NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX members_of_chat ON members (chat_id, position);
CREATE INDEX members_user ON members (user_id, chat_id);

CREATE TABLE chat_messages (
    id text COLLATE "C" PRIMARY KEY,
    chat_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL UNIQUE,
    data json NOT NULL
);
CREATE INDEX chat_messages_history ON chat_messages (chat_id, seq);

-- The search index: the message ``seq`` holds ``term`` and is visible in
-- ``scope`` (a chat id, "public" or "user:<id>").
CREATE TABLE postings (
    scope text COLLATE "C" NOT NULL,
    term text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (scope, term, seq)
);

CREATE TABLE attachments (
    id text COLLATE "C" PRIMARY KEY,
    chat_id text COLLATE "C" NOT NULL,
    sha256 text COLLATE "C" NOT NULL,
    thumbnail_sha256 text COLLATE "C",
    data json NOT NULL
);
CREATE INDEX attachments_chat ON attachments (chat_id);
CREATE INDEX attachments_sha256 ON attachments (sha256);
CREATE INDEX attachments_thumbnail ON attachments (thumbnail_sha256) WHERE thumbnail_sha256 IS NOT NULL;

-- Published public keys.
CREATE TABLE keys (
    id text COLLATE "C" PRIMARY KEY,
    user_id text COLLATE "C" NOT NULL,
    position bigint GENERATED ALWAYS AS IDENTITY,
    data json NOT NULL
);
CREATE INDEX keys_user ON keys (user_id, position);

-- One-time codes, keyed "purpose:user_id".
CREATE TABLE codes (
    id text COLLATE "C" PRIMARY KEY,
    data json NOT NULL
);

CREATE TABLE notifications (
    id text COLLATE "C" PRIMARY KEY,
    user_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL UNIQUE,
    kind text COLLATE "C",
    is_read boolean NOT NULL,
    data json NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, seq);
CREATE INDEX notifications_user_kind ON notifications (user_id, kind, seq);
CREATE INDEX notifications_unread ON notifications (user_id, seq) WHERE NOT is_read;

CREATE TABLE devices (
    id text COLLATE "C" PRIMARY KEY,
    user_id text COLLATE "C" NOT NULL,
    position bigint GENERATED ALWAYS AS IDENTITY,
    data json NOT NULL
);
CREATE INDEX devices_user ON devices (user_id, position);

-- The push queue: pending jobs by due time, dead letters by age.
CREATE TABLE push_jobs (
    id text COLLATE "C" PRIMARY KEY,
    status text COLLATE "C" NOT NULL,
    next_attempt_at double precision,
    created_at text COLLATE "C",
    position bigint GENERATED ALWAYS AS IDENTITY,
    data json NOT NULL
);
CREATE INDEX push_jobs_due ON push_jobs (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX push_jobs_dead ON push_jobs (created_at DESC, position) WHERE status = 'dead';

-- Small values such as the notifier's mark ``notified_seq``.
CREATE TABLE meta (
    key text COLLATE "C" PRIMARY KEY,
    value json
);
