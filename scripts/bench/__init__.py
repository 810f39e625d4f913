"""How fast the consumer catches up, next to what PostgreSQL itself can take.

    .venv/bin/python scripts/bench                       # every profile, default sizes
    .venv/bin/python scripts/bench --profile busy --blocks 1000
    .venv/bin/python scripts/bench --profile busy --blocks 100000 \
        --busy-txs 5 --busy-plays 200 --tip-blocks 0 --ceiling-blocks 2000  # memory, ~1 h
    .venv/bin/python scripts/bench --quick               # every profile, small, seconds

For each chain profile it serves a devnet from this process, backfills N blocks
into a fresh database (the real migrations plus an on_play-style aggregate
trigger) with the consumer as its own process, then lets the chain grow one
block per interval and measures tip latency. It prints one Markdown table.

Why it is built this way:
- The consumer is `python -m consumer run`, the real command line, in a child
  process: its CPU seconds (/proc/PID/stat, over the measured span) and peak RSS
  (the kernel's VmHWM for its own address space) are its own, not the devnet's
  or the benchmark's.
- The ceiling is measured in the same run on the same rows: the blocks are
  decoded outside the timed section and inserted with the best plain idempotent
  path we know (binary COPY into a temporary staging table, ledger rows with
  ON CONFLICT DO NOTHING RETURNING feeding INSERT ... SELECT into plays), into a
  second fresh database with the same trigger, in batches of a few thousand
  rows. Only the inserts are timed, so the ratio says what the pipeline costs.
  Half of its rows go in before the consumer runs and half after, so a change
  in the load of a shared machine lands on both sides of the ratio.
- Commit times come from NOTIFY, sent by a trigger on the checkpoint row: the
  server delivers it when the transaction commits, so its arrival here is the
  commit on the same clock (time.time()) as the devnet's `served` times.
- Memory flatness is a slope, not a peak: RSS is sampled through the run and
  fitted against the committed height, so a leak shows as MB per 10k blocks
  even in a run too short to reach any limit.
- The devnet serves blocks generated before the clock starts (ServedChain), so
  its Python block generator does not take CPU from the two being measured.

One module per job: `scenario` (what a run is), `databases` (fresh measured
databases), `ceiling` (PostgreSQL without the consumer), `records` and
`listener` (what a consumer run did, seen from outside), `process` (the
consumer as a child process), `catch_up` and `tip` (the two measurements),
`measure` (one profile, start to end), `report` (the table), `cli`.
"""
