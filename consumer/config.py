"""Settings: the only reader of CORE_PLAYS_* variables, and where defaults live.

Every option is declared once in `OPTIONS`; the command line, the environment
names and the README table are all made from it, so a flag cannot exist
without its variable. Flags win over the environment. The database password
never comes from a flag (flags show in `ps`): only from the environment, a
file, or libpq's own PGPASSWORD/.pgpass.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumer.errors import ConfigError

__all__ = [
    "OPTIONS",
    "BatchSettings",
    "HttpSettings",
    "Option",
    "Settings",
    "SinkSettings",
    "SourceSettings",
    "add_options",
    "env_name",
]

ENV_PREFIX = "CORE_PLAYS_"


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class SourceSettings:
    core_url: str = "http://127.0.0.1:50051"
    source_mode: str = "auto"
    rpc_timeout_s: float = 10.0
    connect_timeout_s: float = 30.0
    max_message_bytes: int = 256 * 1024 * 1024
    poll_interval_s: float = 0.5
    poll_window: int = 500
    poll_concurrency: int = 4
    catchup_threshold_blocks: int = 1000
    head_refresh_s: float = 5.0
    retry_cap_s: float = 10.0

    @property
    def mode(self) -> str:
        return self.source_mode

    def __post_init__(self) -> None:
        if self.source_mode not in ("auto", "stream", "poll"):
            raise ConfigError(
                f"--source-mode must be auto, stream or poll, got {self.source_mode!r}"
            )
        if not 1 <= self.poll_window <= 500:
            raise ConfigError(
                f"--poll-window must be 1..500 (GetBlocks' limit), got {self.poll_window}"
            )
        for name in (
            "rpc_timeout_s",
            "connect_timeout_s",
            "max_message_bytes",
            "poll_interval_s",
            "poll_concurrency",
            "head_refresh_s",
            "retry_cap_s",
        ):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class SinkSettings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    password: str | None = field(default=None, repr=False)
    stream: str = "live"
    connect_timeout_s: float = 30.0
    lease_retry_s: float = 2.0
    rewind_checkpoint: bool = False
    refused_retry_s: float = 300.0

    def __post_init__(self) -> None:
        try:
            conninfo_to_dict(self.database_url)
        except Exception as exc:  # psycopg raises ProgrammingError for any bad string
            raise ConfigError(f"--database-url is not a libpq URL or DSN: {exc}") from None
        if not self.stream.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"--stream must be letters, digits, - or _, got {self.stream!r}")
        _positive("connect_timeout_s", self.connect_timeout_s)
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
        params = conninfo_to_dict(self.database_url)
        params.pop("password", None)
        return make_conninfo("", **params)

    def __repr__(self) -> str:
        return (
            f"SinkSettings(database_url={self.safe_url!r}, password="
            f"{'<redacted>' if self.password else None}, stream={self.stream!r})"
        )


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_blocks: int = 1000
    max_plays: int = 5000
    queue_blocks: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_blocks", "max_plays", "queue_blocks"):
            _positive(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class HttpSettings:
    metrics_addr: str = "0.0.0.0:9464"
    ready_max_lag_s: float = 60.0

    def __post_init__(self) -> None:
        _host, sep, port = self.metrics_addr.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"--metrics-addr must be host:port, got {self.metrics_addr!r}")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class Settings:
    source: SourceSettings = field(default_factory=SourceSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    from_height: int | None = None
    to_height: int | None = None
    log_format: str = "text"
    log_level: str = "info"
    debug: bool = False
    no_audit: bool = False
    audit_interval_s: float = 5.0

    def __post_init__(self) -> None:
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
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(
                f"--log-level must be debug, info, warning or error, got {self.log_level!r}"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        """Flags win over CORE_PLAYS_* variables, which win over the defaults."""
        values: dict[str, dict[str, Any]] = {
            "": {},
            "source": {},
            "sink": {},
            "batch": {},
            "http": {},
        }
        for opt in OPTIONS:
            raw = getattr(args, opt.dest, None)
            if raw is None and env_name(opt.flag) in environ:
                text = environ[env_name(opt.flag)]
                try:
                    raw = opt.parse(text)
                except ValueError:
                    raise ConfigError(
                        f"{env_name(opt.flag)}={text!r}: not a valid value for --{opt.flag}"
                    ) from None
            if raw is not None:
                values[opt.section][opt.dest] = raw
        sink = values["sink"]
        flag_url = getattr(args, "database_url", None)
        if flag_url and _conninfo_params(flag_url).get("password"):
            raise ConfigError(
                "--database-url carries a password, which would show in `ps`: pass it in "
                "CORE_PLAYS_DATABASE_PASSWORD or --database-password-file instead"
            )
        sink["password"] = _read_password(environ, sink.pop("database_password_file", None))
        return cls(
            source=SourceSettings(**values["source"]),
            sink=SinkSettings(**sink),
            batch=BatchSettings(**values["batch"]),
            http=HttpSettings(**values["http"]),
            **values[""],
        )


def _conninfo_params(url: str) -> dict[str, object]:
    try:
        return dict(conninfo_to_dict(url))
    except Exception:  # reported by SinkSettings with the flag's name
        return {}


def _read_password(environ: Mapping[str, str], path: str | None) -> str | None:
    if path is not None:
        try:
            return Path(path).read_text().rstrip("\n")
        except OSError as exc:
            raise ConfigError(f"--database-password-file {path}: {exc.strerror}") from None
    return environ.get(ENV_PREFIX + "DATABASE_PASSWORD")


@dataclass(frozen=True, slots=True)
class Option:
    """One setting as the command line and the environment know it."""

    flag: str
    section: str  # "" for Settings itself, else the sub-settings attribute
    parse: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    is_switch: bool = False

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.replace("-", "_").upper()


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


OPTIONS: tuple[Option, ...] = (
    Option(
        "core-url",
        "source",
        str,
        "Core node gRPC address: http://host:port or host:port "
        "(plaintext HTTP/2), https://host[:port] (TLS).",
    ),
    Option(
        "source-mode",
        "source",
        str,
        "auto: GetBlocks windows to catch up, StreamBlocks at "
        "the tip, polling if the node lacks StreamBlocks; stream or poll force one path.",
        choices=("auto", "stream", "poll"),
    ),
    Option("rpc-timeout-s", "source", float, "Deadline of each unary call to the node."),
    Option(
        "connect-timeout-s",
        "source",
        float,
        "How long to try the node and the database at "
        "start before exiting with a configuration error.",
    ),
    Option("max-message-bytes", "source", int, "Largest gRPC reply accepted (a big block)."),
    Option("poll-interval-s", "source", float, "Wait between polls at the tip (poll mode)."),
    Option("poll-window", "source", int, "Heights per GetBlocks call (at most 500)."),
    Option("poll-concurrency", "source", int, "GetBlocks calls in flight while catching up."),
    Option(
        "catchup-threshold-blocks",
        "source",
        int,
        "In auto mode, poll GetBlocks windows while more than this many blocks behind the head.",
    ),
    Option(
        "head-refresh-s",
        "source",
        float,
        "How often the chain head is asked for while streaming (for lag).",
    ),
    Option("retry-cap-s", "source", float, "Longest wait between retries."),
    Option("database-url", "sink", str, "PostgreSQL libpq URL or DSN, without the password."),
    Option(
        "database-password-file",
        "sink",
        str,
        "File holding the database password (or set CORE_PLAYS_DATABASE_PASSWORD).",
    ),
    Option(
        "stream",
        "sink",
        str,
        "Checkpoint stream: 'live' follows the tip; another name is "
        "a bounded backfill with its own checkpoint and writer lock.",
    ),
    Option(
        "lease-retry-s",
        "sink",
        float,
        "How often a standby tries for the writer lock (it takes over within about this "
        "long when the leader dies).",
    ),
    Option(
        "rewind-checkpoint",
        "sink",
        _bool,
        "Let --from-height move the checkpoint back "
        "(by default a replay below it leaves it where it is).",
        is_switch=True,
    ),
    Option(
        "refused-retry-s",
        "sink",
        float,
        "How long a batch PostgreSQL refuses (bad value, a trigger raising) is retried, "
        "not ready and alerting, before its refused transactions are set aside for "
        "`quarantine retry`.",
    ),
    Option("max-blocks", "batch", int, "Most blocks in one database transaction."),
    Option("max-plays", "batch", int, "Most plays in one database transaction."),
    Option("queue-blocks", "batch", int, "Decoded blocks buffered between node and database."),
    Option("metrics-addr", "http", str, "Address for /metrics, /healthz and /readyz."),
    Option("ready-max-lag-s", "http", float, "/readyz fails while lag exceeds this."),
    Option("from-height", "", int, "Start at this height (replays are idempotent)."),
    Option("to-height", "", int, "Stop after this height and exit 0."),
    Option("log-format", "", str, "text or json.", choices=("text", "json")),
    Option("log-level", "", str, "debug, info, warning or error."),
    Option("debug", "", _bool, "Print tracebacks for errors.", is_switch=True),
    Option(
        "no-audit",
        "",
        _bool,
        "Turn off the continuous audit (stream-delivered blocks re-read through GetBlocks "
        "and repaired; a bounded run then ends without waiting for it).",
        is_switch=True,
    ),
    Option(
        "audit-interval-s",
        "",
        float,
        "How often the continuous audit re-reads what the stream delivered.",
    ),
)


def add_options(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    """Add the options of the given sections; defaults stay None so env can fill them."""
    defaults = _defaults()
    for opt in OPTIONS:
        if opt.section not in sections and opt.flag not in sections:
            continue
        default = defaults.get(opt.dest)
        text = f"{opt.help} [env {env_name(opt.flag)}" + (
            f"; default {default}]" if default is not None else "]"
        )
        if opt.is_switch:
            parser.add_argument(
                f"--{opt.flag}", action="store_const", const=True, default=None, help=text
            )
        else:
            parser.add_argument(
                f"--{opt.flag}", type=opt.parse, choices=opt.choices, default=None, help=text
            )


def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in (SourceSettings, SinkSettings, BatchSettings, HttpSettings, Settings):
        for f in fields(cls):
            if f.default is not MISSING and f.default is not None:
                out[f.name] = f.default
    return out
