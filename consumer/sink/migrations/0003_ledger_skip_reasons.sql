-- Skipped plays by reason, per transaction: `plays-consumer status` totals
-- them, and being per ledger row they are counted once however often a block
-- is replayed. NULL when nothing was skipped (the common case costs nothing).
ALTER TABLE core_plays.tx_ledger ADD COLUMN skip_reasons jsonb;
