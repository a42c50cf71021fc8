-- oxc's schema, version 5: stream tickets open one stream, and the generated
-- signing key every process shares.

-- Stream tickets redeemed, by their id (the JWT's jti). Redeeming is one
-- INSERT ... ON CONFLICT DO NOTHING RETURNING, so of two processes presented
-- the same ticket exactly one gets a row back. Rows outlive their ticket by a
-- few minutes (the processes' clocks may disagree) and are then pruned.
CREATE TABLE stream_tickets (
    id text COLLATE "C" PRIMARY KEY,
    expires_at double precision NOT NULL
);
CREATE INDEX stream_tickets_expires_at ON stream_tickets (expires_at);

-- The key that signs access tokens when JWT_SECRET_KEY is not set: generated
-- by the first process to start (INSERT ... ON CONFLICT DO NOTHING, then read),
-- so every process signs and verifies with the same one. Not a store table:
-- ``oxc migrate-store`` does not copy it.
CREATE TABLE signing_keys (
    name text COLLATE "C" PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
