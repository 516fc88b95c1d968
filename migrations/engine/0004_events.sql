-- The agents' `event` messages (errored, memory_restart, health_failed, disk, job_failed,
-- deployments), kept for status_history_retention. `id` is given by the engine, increasing, so
-- that pages of newest-first events continue with `before`.
CREATE TABLE events (
    id BIGINT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    app TEXT,
    -- At most 4 KiB.
    message TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX events_agent ON events (agent_id, id);
CREATE INDEX events_kind ON events (kind, id);
CREATE INDEX events_at ON events (at);
