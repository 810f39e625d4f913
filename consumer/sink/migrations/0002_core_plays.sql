-- The service's own state: the idempotency ledger, the progress checkpoint and
-- the quarantine for bytes that could not be decoded.

-- One row per play transaction ever written. A batch inserts these first with
-- ON CONFLICT DO NOTHING and writes plays only for the rows that came back, so
-- nothing reaches plays (and its on_play trigger) twice. Never pruned: plays
-- are pruned by other jobs, so only the ledger can protect a deep replay.
CREATE TABLE core_plays.tx_ledger (
    chain_id text NOT NULL,
    block_height bigint NOT NULL,
    tx_index integer NOT NULL,
    tx_hash text NOT NULL,
    play_count integer NOT NULL,
    skipped_count integer NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_height, tx_index),
    CONSTRAINT tx_ledger_hash_key UNIQUE (chain_id, tx_hash)
);

-- Progress per (chain, stream), committed in the same transaction as its rows.
CREATE TABLE core_plays.checkpoint (
    chain_id text NOT NULL,
    stream text NOT NULL,
    start_height bigint NOT NULL,
    height bigint NOT NULL,
    block_hash text NOT NULL,
    block_time timestamp,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, stream)
);

-- Raw bytes that could not be decoded; tx_index -1 is a whole unreadable block.
-- Keyed like the ledger, so a replay adds nothing.
CREATE TABLE core_plays.quarantine (
    chain_id text NOT NULL,
    block_height bigint NOT NULL,
    tx_index integer NOT NULL,
    tx_hash text NOT NULL,
    data bytea NOT NULL,
    error text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_height, tx_index)
);
