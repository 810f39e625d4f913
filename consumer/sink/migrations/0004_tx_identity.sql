-- A transaction's identity is its hash, not its position.
--
-- Until now the ledger's primary key was (chain_id, block_height, tx_index), and a
-- batch inserts with ON CONFLICT DO NOTHING: the first transaction delivered at a
-- position won it, so a DIFFERENT transaction arriving there later (a block first
-- delivered incomplete, a node that re-sorts a block's transactions) was taken for a
-- replay and its plays were never written. The key becomes (chain_id, tx_hash) (it was
-- already unique); the position stays recorded, indexed (not unique) for readers
-- and audits, and a disagreement between deliveries is stored in core_plays.conflicts.
--
-- Online on a ledger of millions of rows: both indexes are built CONCURRENTLY before
-- the transaction (writers go on), and the transaction only swaps constraint metadata
-- and adds nullable columns, each instant, under a lock_timeout so that it never queues
-- writers behind it for long (consumer.migrate retries it).
CREATE INDEX CONCURRENTLY IF NOT EXISTS tx_ledger_position
    ON core_plays.tx_ledger (chain_id, block_height, tx_index);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tx_ledger_identity
    ON core_plays.tx_ledger (chain_id, tx_hash);
-- transaction --
SET LOCAL lock_timeout = '2s';
ALTER TABLE core_plays.tx_ledger
    DROP CONSTRAINT tx_ledger_pkey,
    DROP CONSTRAINT tx_ledger_hash_key,
    ADD CONSTRAINT tx_ledger_pkey PRIMARY KEY USING INDEX tx_ledger_identity,
    -- Which node call delivered the transaction first, and the hash of its block:
    -- what `verify` and the audit compare a second delivery with.
    ADD COLUMN rpc text,
    ADD COLUMN block_hash text;

-- Every disagreement between two deliveries of the chain, kept for audit. One row per
-- distinct disagreement (a replay that meets it again adds nothing).
--   moved           a written transaction delivered at another position of its block
--   other_height    a written transaction delivered again at another height
--   position_taken  another transaction delivered at a position a written one holds
--   missing         the audit found a plays transaction the first delivery lacked
--                   (written by the repair)
--   extra           written from a delivery, but absent from the block as re-read
--   block_hash      the block re-read has another hash than the one written
-- `other_*` describe what was there before (the ledger row, or the block as written).
CREATE TABLE core_plays.conflicts (
    chain_id text NOT NULL,
    kind text NOT NULL,
    block_height bigint NOT NULL,
    tx_index integer NOT NULL,
    tx_hash text NOT NULL,
    rpc text NOT NULL,
    other_height bigint NOT NULL,
    other_index integer NOT NULL,
    other_hash text NOT NULL,
    other_rpc text,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, kind, block_height, tx_index, tx_hash, other_height, other_index,
                 other_hash)
);

-- How far the continuous audit has re-read this stream's blocks through GetBlocks:
-- everything at or below it was delivered by GetBlocks or compared with it.
ALTER TABLE core_plays.checkpoint ADD COLUMN audited_height bigint;
