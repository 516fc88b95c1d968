-- Deployments sent to agents (`deploy_app`) and their progress (`deploy_operation`). `id` is the
-- operation's id; the operation row holds the command, this one the phases.
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    app TEXT NOT NULL,
    -- The git ref asked for; NULL: the app's configured one.
    git_ref TEXT,
    -- queued, pulling_source, …, completed, failed, rolled_back (src/deploy/phase.rs).
    phase TEXT NOT NULL,
    -- As the operation's: sent, starting, completed, failed.
    status TEXT NOT NULL,
    release_id TEXT,
    commit_id TEXT,
    -- The last 64 KiB of the output reported.
    output TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX deployments_agent ON deployments (agent_id, created_at);
