-- Other writers (DESIGN §4b): the handover adopts into the ledger the transactions that
-- the writer it replaces already wrote, so that this service never writes them again.
-- `origin` says who wrote a ledger row's plays: 'written' (this service) or 'adopted'
-- (another writer, recognised by content and place); `play_ids` the plays rows an
-- adopted transaction claimed, so that each of them accounts for one play only.
-- Adding a column with a constant default, or a nullable one, is instant on any ledger.
ALTER TABLE core_plays.tx_ledger
    ADD COLUMN origin text NOT NULL DEFAULT 'written',
    ADD COLUMN play_ids bigint[];

-- One row per (chain, other writer): how far the handover has adopted, and whether and
-- where this service took over. `gaps` starts this service's responsibility after
-- the height the other writer's rows end at.
CREATE TABLE core_plays.handover (
    chain_id text NOT NULL,
    source text NOT NULL,
    adopted_through bigint NOT NULL DEFAULT 0,
    other_height bigint,
    taken_over_height bigint,
    taken_over_at timestamptz,
    resumed_height bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, source)
);
