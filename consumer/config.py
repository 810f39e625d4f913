"""Settings: the only reader of CORE_PLAYS_* variables, and where defaults live.

Each option is declared once, as a field of the settings dataclass that uses
it: `option(default, help)` (consumer/options.py) gives the field its default and
help, the field's annotation gives the type, and its name gives the flag
(`--core-url`) and the variable (`CORE_PLAYS_CORE_URL`). argparse, the environment reader and the
README check are all derived from those fields, so an option cannot reach the
wrong settings object (there is no routing to get wrong) and cannot exist as a
flag without its variable. Flags win over the environment, which wins over the
defaults. The database password never comes from a flag (flags show in `ps`):
only from the environment, a file, or libpq's own PGPASSWORD/.pgpass.

To add an option: one field, `name_s: float = option(5.0, "What it does.")`, in
the settings class whose code reads it. `run` takes every option at once; name
it in another command's tuple in cli.py if that command needs it too; paste the
README row that tests/integration/test_readme.py prints.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from psycopg.conninfo import make_conninfo

from consumer.addresses import (
    check_ca_file,
    database_params,
    missing_port_notes,
    parse_core_url,
    parse_host_port,
)
from consumer.errors import ConfigError
from consumer.logs import LogFormat, LogLevel
from consumer.model import MAX_GETBLOCKS_HEIGHTS
from consumer.options import (
    ENV_PREFIX,
    Option,
    add_option,
    build_section,
    coerce_enums,
    env_name,
    option,
    options_of,
    parse_bool,
)

__all__ = [
    "OPTIONS",
    "BatchSettings",
    "HttpSettings",
    "LogFormat",
    "LogLevel",
    "Option",
    "Settings",
    "SinkSettings",
    "SourceMode",
    "SourceSettings",
    "add_options",
    "env_name",
    "flags_of",
    "parse_bool",
    "parse_core_url",
    "parse_host_port",
    "port_notes",
    "top_level_settings",
]

PASSWORD_ENV = ENV_PREFIX + "DATABASE_PASSWORD"
_CONNECT_TIMEOUT_S = 30.0


class SourceMode(StrEnum):
    AUTO = "auto"
    STREAM = "stream"
    POLL = "poll"


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class SourceSettings:
    core_url: str = option(
        "http://127.0.0.1:50051",
        "Core node gRPC address: http://host:port or host:port (plaintext HTTP/2), "
        "https://host[:port] (TLS).",
        metavar="URL",
    )
    core_ca_file: str | None = option(
        None,
        "PEM file of the certificate authority that signed the node's TLS certificate "
        "(https:// only; default: the system's trusted roots).",
        metavar="PATH",
    )
    source_mode: SourceMode = option(
        SourceMode.AUTO,
        "auto: GetBlocks windows to catch up, StreamBlocks at the tip, polling if the node "
        "lacks StreamBlocks; stream or poll force one path.",
    )
    rpc_timeout_s: float = option(10.0, "Deadline of each unary call to the node.")
    connect_timeout_s: float = option(
        _CONNECT_TIMEOUT_S,
        "How long to try the node and the database at start before exiting with a "
        "configuration error.",
    )
    max_message_bytes: int = option(
        32 * 1024 * 1024,
        "Largest gRPC reply accepted, so the largest block (peak memory is about 60 MB plus "
        "5 to 9 times the largest block: raise the pod's memory limit with it).",
    )
    poll_interval_s: float = option(0.5, "Wait between polls at the tip (poll mode).")
    poll_window: int = option(
        MAX_GETBLOCKS_HEIGHTS, f"Heights per GetBlocks call (at most {MAX_GETBLOCKS_HEIGHTS})."
    )
    poll_concurrency: int = option(4, "GetBlocks calls in flight while catching up.")
    catchup_threshold_blocks: int = option(
        1000,
        "In auto mode, poll GetBlocks windows while more than this many blocks behind the head.",
    )
    head_refresh_s: float = option(
        5.0, "How often the chain head is asked for while streaming (for lag)."
    )
    retry_cap_s: float = option(10.0, "Longest wait between retries.")
    stall_timeout_s: float = option(
        30.0,
        "A stream that sends no block for this long while the node's head is ahead is "
        "stalled: logged, counted and reconnected.",
    )

    def __post_init__(self) -> None:
        coerce_enums(self)
        check_ca_file(self.core_url, self.core_ca_file)
        if not 1 <= self.poll_window <= MAX_GETBLOCKS_HEIGHTS:
            raise ConfigError(
                f"--poll-window must be 1..{MAX_GETBLOCKS_HEIGHTS} (GetBlocks' limit), "
                f"got {self.poll_window}"
            )
        for name in (
            "rpc_timeout_s",
            "connect_timeout_s",
            "max_message_bytes",
            "poll_interval_s",
            "poll_concurrency",
            "head_refresh_s",
            "retry_cap_s",
            "stall_timeout_s",
        ):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class SinkSettings:
    database_url: str = option(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "PostgreSQL libpq URL or key=value DSN, without the password.",
        metavar="URL",
    )
    database_password_file: str | None = option(
        None,
        "File holding the database password (default: CORE_PLAYS_DATABASE_PASSWORD, else "
        "libpq's PGPASSWORD or .pgpass).",
        metavar="PATH",
    )
    stream: str = option(
        "live",
        "Checkpoint stream: 'live' follows the tip; another name is a bounded backfill with "
        "its own checkpoint and writer lock.",
        metavar="NAME",
    )
    lease_retry_s: float = option(
        2.0,
        "How often a standby tries for the writer lock (it takes over within about this "
        "long when the leader dies).",
    )
    rewind_checkpoint: bool = option(
        False,
        "Let --from-height move the checkpoint back "
        "(by default a replay below it leaves it where it is).",
    )
    refused_retry_s: float = option(
        300.0,
        "How long a batch PostgreSQL refuses (bad value, a trigger raising) is retried, "
        "not ready and alerting, before its refused transactions are set aside for "
        "`quarantine retry`.",
    )
    # Not options of their own: the password from the environment or the file
    # above, and the one --connect-timeout-s (SourceSettings), copied in by from_args.
    password: str | None = field(default=None, repr=False)
    connect_timeout_s: float = _CONNECT_TIMEOUT_S

    def __post_init__(self) -> None:
        database_params(self.database_url, "--database-url")
        if not self.stream.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"--stream must be letters, digits, - or _, got {self.stream!r}")
        _positive("connect_timeout_s", self.connect_timeout_s)
        _positive("lease_retry_s", self.lease_retry_s)
        if self.refused_retry_s < 0:
            raise ConfigError(f"--refused-retry-s must be 0 or more, got {self.refused_retry_s}")

    @property
    def conninfo(self) -> str:
        """The connection string with the password added; never log it."""
        if self.password is None:
            return self.database_url
        return make_conninfo(self.database_url, password=self.password)

    @property
    def safe_url(self) -> str:
        """The URL with any password removed, for messages and logs."""
        params = database_params(self.database_url, "--database-url")
        params.pop("password", None)
        return make_conninfo("", **params)

    def __repr__(self) -> str:
        return (
            f"SinkSettings(database_url={self.safe_url!r}, password="
            f"{'<redacted>' if self.password else None}, stream={self.stream!r})"
        )


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_blocks: int = option(1000, "Most blocks in one database transaction.")
    max_plays: int = option(5000, "Most plays in one database transaction.")
    queue_blocks: int = option(1000, "Decoded blocks buffered between node and database.")

    def __post_init__(self) -> None:
        for name in ("max_blocks", "max_plays", "queue_blocks"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class HttpSettings:
    metrics_addr: str = option(
        "0.0.0.0:9464", "Address for /metrics, /healthz and /readyz.", metavar="HOST:PORT"
    )
    ready_max_lag_s: float = option(60.0, "/readyz fails while lag exceeds this.")

    def __post_init__(self) -> None:
        _ = self.host_port  # refuse a bad address now, naming the flag

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_host_port(self.metrics_addr, "--metrics-addr", default_host="0.0.0.0")


@dataclass(frozen=True, slots=True)
class Settings:
    source: SourceSettings = field(default_factory=SourceSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    from_height: int | None = option(
        None,
        "Start at this height (replays are idempotent); default: after the checkpoint.",
        metavar="N",
    )
    to_height: int | None = option(
        None, "Stop after this height and exit 0; default: follow the chain forever.", metavar="M"
    )
    log_format: LogFormat = option(
        LogFormat.TEXT, "text, or json: every line on stderr one JSON object, the fatal one too."
    )
    log_level: LogLevel = option(LogLevel.INFO, "Least severe log level shown.")
    debug: bool = option(False, "Print tracebacks for errors.")
    no_audit: bool = option(
        False,
        "Turn off the continuous audit (stream-delivered blocks re-read through GetBlocks "
        "and repaired; a bounded run then ends without waiting for it).",
    )
    audit_interval_s: float = option(
        15.0,
        "How often the continuous audit re-reads what the stream delivered (one GetBlocks "
        "call and one ledger query a round, whatever the blocks).",
    )
    handover_from: str | None = option(
        None,
        "Run beside the writer this service replaces: the progress table it keeps "
        "(core_indexed_blocks). Writes no height above that writer's; adopts what it "
        "wrote, writes only what it lost; default: no handover (verify and the audit "
        "still recognise core_indexed_blocks' rows when it exists).",
        metavar="TABLE",
    )
    handover_quiet_s: float | None = option(
        None,
        "With --handover-from: once the other writer's height has not moved for this long "
        "while the node is ahead, take over and write alone; default: keep trailing.",
        metavar="S",
    )

    def __post_init__(self) -> None:
        coerce_enums(self)
        if self.from_height is not None and self.from_height < 1:
            raise ConfigError(f"--from-height must be at least 1, got {self.from_height}")
        if self.to_height is not None and self.to_height < 1:
            raise ConfigError(f"--to-height must be at least 1, got {self.to_height}")
        if (
            self.from_height is not None
            and self.to_height is not None
            and self.to_height < self.from_height
        ):
            raise ConfigError(
                f"--to-height {self.to_height} is below --from-height {self.from_height}"
            )
        _positive("audit_interval_s", self.audit_interval_s)
        if self.handover_quiet_s is not None:
            _positive("handover_quiet_s", self.handover_quiet_s)
            if self.handover_from is None:
                raise ConfigError("--handover-quiet-s needs --handover-from TABLE")

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        """Flags win over CORE_PLAYS_* variables, which win over the defaults."""
        _refuse_password_in_url(args, environ)
        source = build_section(SourceSettings, args, environ)
        sink = build_section(SinkSettings, args, environ)
        sink = replace(
            sink,
            password=_read_password(environ, sink.database_password_file),
            connect_timeout_s=source.connect_timeout_s,
        )
        return replace(
            build_section(cls, args, environ),
            source=source,
            sink=sink,
            batch=build_section(BatchSettings, args, environ),
            http=build_section(HttpSettings, args, environ),
        )


_SECTIONS = (SourceSettings, SinkSettings, BatchSettings, HttpSettings, Settings)
OPTIONS: tuple[Option, ...] = tuple(o for cls in _SECTIONS for o in options_of(cls))
_BY_FLAG = {o.flag: o for o in OPTIONS}
assert len(_BY_FLAG) == len(OPTIONS), "two options with one name"


def _refuse_password_in_url(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """A password inside the URL is refused wherever the URL comes from (one rule), and
    an unreadable URL is named as the operator gave it (flag or variable)."""
    name, url = "--database-url", getattr(args, "database_url", None)
    if url is None:
        name, url = env_name("database-url"), environ.get(env_name("database-url"))
    if url is not None and database_params(url, name).get("password"):
        raise ConfigError(
            f"{name} carries a password, which would show in `ps` and in logs: pass it in "
            f"{PASSWORD_ENV} or --database-password-file instead"
        )


def _read_password(environ: Mapping[str, str], path: str | None) -> str | None:
    if path is not None:
        try:
            return Path(path).read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"--database-password-file {path}: {exc.strerror}") from None
    return environ.get(PASSWORD_ENV)


def port_notes(settings: Settings, environ: Mapping[str, str], *, core: bool = True) -> list[str]:
    """What a URL without a port resolves to, for a line at start."""
    core_url = settings.source.core_url if core else None
    return missing_port_notes(core_url, settings.sink.database_url, environ)


def add_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add options to a command by flag name (`"core-url"`; `flags_of(cls)` names a class's)."""
    for name in names:
        if name not in _BY_FLAG:
            raise KeyError(f"no option --{name}")  # caught by the parser tests
        add_option(parser, _BY_FLAG[name])


def top_level_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Settings' own options (logging, heights) only: for commands without a node or database."""
    return build_section(Settings, args, environ)


def flags_of(*sections: type) -> tuple[str, ...]:
    """Every option flag declared on these settings classes, in declaration order."""
    return tuple(o.flag for o in OPTIONS if o.owner in sections)
