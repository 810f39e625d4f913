"""Every Prometheus metric the service exports, on an injected registry.

Metrics observe; they never decide. Lag in seconds and readiness are read at
scrape time from the runner's own state (consumer.service.readiness, through `watch`),
so lag keeps rising while the service is stuck instead of freezing at its last
good value (the classic silent stall of block indexers), and neither gauge can
disagree with what /readyz answers.
The reason enums come from model, the one shared vocabulary, so the exported
label values cannot drift from what decode reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.model import (
    BatchResult,
    ConflictKind,
    DifferenceKind,
    ReconnectTarget,
    RepairReason,
    SkipReason,
    Undecodable,
)

__all__ = ["PREFIX", "SOURCE_MODES", "Metrics", "SourceMetrics"]

PREFIX = "core_plays_"
# The `mode` label of source_mode: the path blocks come by right now.
SOURCE_MODES = ("stream", "poll")

_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FETCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """Owns every metric object and name; components call its observe methods."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self._clock = clock
        self._head = math.nan
        self._processed = math.nan

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=registry)

        self.chain_head_height = gauge("chain_head_height", "Latest block height the node reports.")
        self.chain_head_height.set_function(lambda: self._head)
        self.processed_height = gauge(
            "processed_height", "Height of the last block committed to PostgreSQL."
        )
        self.processed_height.set_function(lambda: self._processed)
        self.lag_blocks = gauge("lag_blocks", "Chain head minus processed height.")
        self.lag_blocks.set_function(self._lag_blocks)
        self.lag_seconds = gauge(
            "lag_seconds",
            "Wall clock minus the block time of the last committed block (computed at scrape).",
        )
        self.lag_seconds.set(math.nan)  # until `watch`
        self.last_commit_timestamp_seconds = gauge(
            "last_commit_timestamp_seconds", "Unix time of the last successful commit."
        )
        self.is_leader = gauge("is_leader", "1 while this process holds the writer lock.")
        # Labels fixed for the life of the process (source_mode is the configured
        # --source-mode), so the series never changes; the path in use right now is
        # source_mode{mode}, whose series all exist from the start.
        self.build_info = gauge(
            "build_info",
            "Always 1; labels describe the build, the chain and the configured settings.",
            ("version", "chain_id", "source_mode", "stream"),
        )
        self.source_mode = gauge(
            "source_mode",
            "1 for the path blocks come by now (stream: StreamBlocks, poll: GetBlocks), else 0.",
            ("mode",),
        )
        self.ready = gauge("ready", "1 while /readyz answers 200 (computed at scrape).")
        self.blocks_total = counter("blocks_total", "Blocks committed.")
        self.transactions_total = counter(
            "transactions_total", "Transactions seen in committed blocks, by type.", ("type",)
        )
        self.plays_written_total = counter("plays_written_total", "Rows inserted into plays.")
        self.plays_skipped_total = counter(
            "plays_skipped_total", "Plays not written, by reason.", ("reason",)
        )
        self.plays_repaired_total = counter(
            "plays_repaired_total",
            "Plays written with a substituted value (the listen is kept), by reason.",
            ("reason",),
        )
        self.quarantined_total = counter(
            "quarantined_total",
            "Undecodable transactions or whole blocks stored in core_plays.quarantine.",
            ("kind",),
        )
        self.duplicate_transactions_total = counter(
            "duplicate_transactions_total",
            "Play transactions already in the ledger (replays, overlaps), not written again.",
        )
        self.source_errors_total = counter(
            "source_errors_total", "Errors talking to the Core node, by gRPC code.", ("code",)
        )
        self.source_stalls_total = counter(
            "source_stalls_total",
            "Stalls of the node: no stream block for --stall-timeout-s while its head was "
            "ahead, or a call past its deadline (each is followed by a reconnect).",
        )
        self.reconnects_total = counter(
            "reconnects_total", "Reconnections, by target (node, database).", ("target",)
        )
        self.db_errors_total = counter("db_errors_total", "Database errors (batch rolled back).")
        self.batch_commit_seconds = Histogram(
            PREFIX + "batch_commit_seconds",
            "Time to write and commit one batch.",
            buckets=_COMMIT_BUCKETS,
            registry=registry,
        )
        self.block_fetch_seconds = Histogram(
            PREFIX + "block_fetch_seconds",
            "Time waiting for the node per block (stream message or GetBlocks window share).",
            buckets=_FETCH_BUCKETS,
            registry=registry,
        )
        self.source_conflicts_total = counter(
            "source_conflicts_total",
            "Deliveries that disagree with the ledger about a transaction's place, by kind "
            "(each distinct one counted once; see core_plays.conflicts).",
            ("kind",),
        )
        self.audit_mismatches_total = counter(
            "audit_mismatches_total",
            "Differences the continuous audit found between a delivered block and the same "
            "block re-read through GetBlocks, by kind (missing ones are repaired).",
            ("kind",),
        )
        self.audit_repaired_plays_total = counter(
            "audit_repaired_plays_total", "Plays the continuous audit wrote that a delivery lacked."
        )
        self.audited_height = gauge(
            "audited_height",
            "Every height at or below this was delivered by GetBlocks or compared with it.",
        )
        self.audited_height.set(math.nan)
        self.batch_blocks = Histogram(
            PREFIX + "batch_blocks",
            "Blocks per committed batch.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=registry,
        )

        self.write_refused = gauge(
            "write_refused",
            "1 while PostgreSQL refuses the batch being written and it is retried "
            "(--refused-retry-s), before its refused transactions are set aside.",
        )
        self.set_aside_pending = gauge(
            "set_aside_pending",
            "Transactions PostgreSQL refused that were set aside and not yet written "
            "(`plays-consumer quarantine retry`).",
        )
        self.set_aside_total = counter(
            "set_aside_total", "Transactions set aside because PostgreSQL refused them."
        )

        # The handover from the writer this service replaces (DESIGN §4b).
        self.handover_state = gauge(
            "handover_state",
            "0: no handover; 1: trailing the other writer (writes nothing above its height); "
            "2: taken over (the other writer stopped; writing alone).",
        )
        self.handover_other_height = gauge(
            "handover_other_height",
            "The other writer's committed height for the chain (its progress table).",
        )
        self.handover_adopted_transactions_total = counter(
            "handover_adopted_transactions_total",
            "Other writer's transactions recorded in the ledger as adopted, not written again.",
        )
        self.handover_adopted_plays_total = counter(
            "handover_adopted_plays_total", "Plays of the adopted transactions."
        )
        self.handover_other_writer_active = gauge(
            "handover_other_writer_active",
            "1 while the other writer writes again after the takeover (its height moves).",
        )
        self.handover_other_writer_resumed_total = counter(
            "handover_other_writer_resumed_total",
            "Times the other writer was seen writing again after the takeover.",
        )
        self.ambiguous_transactions_total = counter(
            "ambiguous_transactions_total",
            "Transactions not in the ledger with only some of their rows in plays: partly "
            "written by another writer, so never written (a person decides).",
        )
        self._export_known_labels()

    def _export_known_labels(self) -> None:
        """Every known label value at 0 from the start, so that rate() and increase()
        see the first event of a series instead of its birth."""
        labelled: tuple[tuple[Counter, Iterable[str]], ...] = (
            (self.plays_skipped_total, SkipReason),
            (self.plays_repaired_total, RepairReason),
            (self.quarantined_total, Undecodable),
            (self.reconnects_total, ReconnectTarget),
            (self.source_conflicts_total, ConflictKind),
            (self.audit_mismatches_total, DifferenceKind),
        )
        for metric, values in labelled:
            for value in values:
                metric.labels(value)
        for mode in SOURCE_MODES:
            self.source_mode.labels(mode).set(0)

    def _lag_blocks(self) -> float:
        # NaN (unknown) rather than 0 until both ends are known: a zero would
        # read as "caught up" on a dashboard.
        if not self._known(self._head, self._processed):
            return math.nan
        return max(0.0, self._head - self._processed)

    def head_value(self) -> float:
        """The highest head the node reported; NaN until it has."""
        return self._head

    @staticmethod
    def _known(*values: float) -> bool:
        return not any(math.isnan(v) for v in values)

    def set_build(self, version: str, chain_id: str, source_mode: str, stream: str) -> None:
        self.build_info.clear()
        self.build_info.labels(version, chain_id, source_mode, stream).set(1)

    def set_source_mode(self, mode: str) -> None:
        for known in SOURCE_MODES:
            self.source_mode.labels(known).set(1 if known == mode else 0)

    def watch(self, ready: Callable[[], bool], lag_s: Callable[[], float]) -> None:
        """Export the runner's /readyz verdict (so an alert can see a leader that is not
        ready) and the lag it decides on, instead of keeping a second copy of either."""
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)
        self.lag_seconds.set_function(lag_s)

    def set_head(self, height: int) -> None:
        # A lagging replica behind a load balancer may report an older head:
        # keep the highest seen so that lag does not dip spuriously.
        if math.isnan(self._head) or height > self._head:
            self._head = float(height)

    def set_processed(self, height: int) -> None:
        """Where the committed rows stand (at start from the checkpoint, then per commit)."""
        self._processed = float(height)
        self.set_head(height)

    def observe_commit(self, result: BatchResult) -> None:
        """Everything one commit changed, from its summary (one type, taken whole)."""
        self.set_processed(result.height)
        self.last_commit_timestamp_seconds.set(self._clock())
        self.blocks_total.inc(result.blocks)
        self.batch_blocks.observe(result.blocks)
        self.plays_written_total.inc(result.plays_written)
        self.duplicate_transactions_total.inc(result.duplicates)
        self.batch_commit_seconds.observe(result.seconds)
        for kind, n in result.tx_types.items():
            self.transactions_total.labels(kind).inc(n)
        for reason, n in result.skipped.items():
            self.plays_skipped_total.labels(reason).inc(n)
        for repair, n in result.repaired.items():
            self.plays_repaired_total.labels(repair).inc(n)
        for what, n in result.quarantined.items():
            self.quarantined_total.labels(what).inc(n)
        for conflict in result.conflicts:
            self.source_conflicts_total.labels(conflict.kind).inc()
        if result.adopted:
            self.handover_adopted_transactions_total.inc(result.adopted)
            self.handover_adopted_plays_total.inc(result.adopted_plays)
        if result.ambiguous:
            self.ambiguous_transactions_total.inc(result.ambiguous)


class SourceMetrics:
    """What the source reports (consumer.source.observer.SourceObserver), as metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def head_seen(self, height: int) -> None:
        self._metrics.set_head(height)

    def path_chosen(self, path: str) -> None:
        self._metrics.set_source_mode(path)

    def fetched(self, seconds: float, blocks: int) -> None:
        """Each block of a reply is observed with its share of the wait."""
        if blocks:
            per_block = seconds / blocks
            observe = self._metrics.block_fetch_seconds.observe
            for _ in range(blocks):
                observe(per_block)

    def refused(self, code: str) -> None:
        self._metrics.source_errors_total.labels(code).inc()

    def stalled(self) -> None:
        self._metrics.source_stalls_total.inc()

    def reconnecting(self) -> None:
        self._metrics.reconnects_total.labels(ReconnectTarget.NODE).inc()
