-- The engine's id of the agent's current connection (NULL when none): a late "offline" of an
-- older connection must not overwrite the "online" of a newer one.
ALTER TABLE agents ADD COLUMN connection BIGINT;
