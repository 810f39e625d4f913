-- Transactions PostgreSQL refused for longer than --refused-retry-s are set
-- aside here instead of being lost: `data` keeps their raw bytes, `retry_rows`
-- the decoded ledger row and plays that `plays-consumer quarantine retry`
-- writes later through the ledger, and `written_at` says when it did. Until
-- then each one is "pending" and the CorePlaysPlaysSetAside alert pages.
-- Undecodable bytes keep kind 'undecodable' and are never retried.
ALTER TABLE core_plays.quarantine
    ADD COLUMN kind text NOT NULL DEFAULT 'undecodable',
    ADD COLUMN retry_rows jsonb,
    ADD COLUMN written_at timestamptz;

CREATE INDEX quarantine_pending ON core_plays.quarantine (chain_id)
    WHERE kind = 'refused' AND written_at IS NULL;
