-- The SHA-256 of the citrusd binary an agent runs, from its `agent_connected` (`binarySha256`);
-- NULL for agents that do not report it. The same statement for SQLite and PostgreSQL.
ALTER TABLE agents ADD COLUMN binary_sha256 TEXT;
