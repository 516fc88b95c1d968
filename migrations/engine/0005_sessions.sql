-- Web panel sessions (src/engine/panel/session.rs). The session id is stored hashed (SHA-256);
-- the CSRF token is what the session's pages send back in `x-csrf-token`. At most 1000 rows:
-- a login drops the oldest beyond that, and the expired ones.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_created ON sessions (created_at);
