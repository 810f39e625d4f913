-- Plays written with a substituted value, by reason, per transaction (as skip_reasons):
-- `plays-consumer reasons` totals skips and repairs over any height range, and being per
-- ledger row they are counted once however often a block is replayed. NULL when nothing
-- was repaired. Adding a nullable column without a default is instant on any ledger.
ALTER TABLE core_plays.tx_ledger ADD COLUMN repair_reasons jsonb;
