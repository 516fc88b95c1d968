-- citrus-engine's schema: one text for SQLite and PostgreSQL. Times are Unix milliseconds.

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- SHA-256 (hex) of the agent key; NULL until the agent enrols.
    key_hash TEXT,
    -- During a key rotation: the new key's hash, accepted until the agent acknowledges it.
    pending_key_hash TEXT,
    -- Single-use enrolment token (hash), its expiry and when it was used.
    enroll_token_hash TEXT,
    enroll_expires_at BIGINT,
    enrolled_at BIGINT,
    status TEXT NOT NULL,
    version TEXT,
    git_version TEXT,
    connected_at BIGINT,
    last_seen_at BIGINT,
    created_at BIGINT NOT NULL
);

-- The latest status_update of each agent, as received (JSON).
CREATE TABLE agent_status (
    agent_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

-- A figure per status_update, kept for status_history_retention.
CREATE TABLE agent_status_history (
    agent_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    cpu_load DOUBLE PRECISION NOT NULL,
    memory_used BIGINT NOT NULL,
    memory_total BIGINT NOT NULL,
    disk_used BIGINT NOT NULL,
    disk_size BIGINT NOT NULL,
    apps_online BIGINT NOT NULL,
    apps_total BIGINT NOT NULL
);
CREATE INDEX agent_status_history_agent_at ON agent_status_history (agent_id, at);
CREATE INDEX agent_status_history_at ON agent_status_history (at);

-- Commands sent to agents and what became of them.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    type TEXT NOT NULL,
    -- The command as sent, secrets removed (JSON).
    command TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX operations_agent ON operations (agent_id, created_at);
CREATE INDEX operations_open ON operations (status, created_at);

-- Droplets provisioned with an agent.
CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    droplet_id BIGINT,
    ip TEXT,
    region TEXT NOT NULL,
    size TEXT NOT NULL,
    image TEXT NOT NULL,
    -- Why the server failed, or the latest problem (e.g. a refused enrolment).
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX servers_agent ON servers (agent_id);
