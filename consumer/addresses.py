"""What an address the operator gives means: the node's URL, a listen address, a libpq URL.

Apart from the settings so that the rules for reading an address, and the messages
that name its flag without repeating a password, are one screen to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from consumer.errors import ConfigError

__all__ = [
    "CORE_DEFAULT_PORT",
    "CORE_TLS_PORT",
    "POSTGRES_DEFAULT_PORT",
    "check_ca_file",
    "database_params",
    "missing_port_notes",
    "parse_core_url",
    "parse_host_port",
]

CORE_DEFAULT_PORT = 50051  # the node's plaintext gRPC port (docs/wire.md)
CORE_TLS_PORT = 443
POSTGRES_DEFAULT_PORT = 5432


def parse_core_url(url: str) -> tuple[str, bool]:
    """`http://host:port` or `host:port` is plaintext HTTP/2, `https://host[:port]` is TLS.

    Returns the gRPC target and whether it is TLS; a missing port is the node's
    default (50051 plaintext, 443 TLS), which `port_notes` tells the operator.
    """
    raw = url if "://" in url else f"http://{url}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--core-url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--core-url {url!r}: expected http://host:port, host:port or https://host[:port]"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--core-url {url!r}: a gRPC address has no path or query")
    tls = parts.scheme == "https"
    port = port or (CORE_TLS_PORT if tls else CORE_DEFAULT_PORT)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", tls


def parse_host_port(address: str, flag: str, *, default_host: str) -> tuple[str, int]:
    """`host:port` (`[::1]:port` for IPv6, `:port` for the default host) to listen on."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{flag} must be host:port, got {address!r}")
    return host.strip("[]") or default_host, int(port)


def database_params(url: str, name: str) -> dict[str, str]:
    """The libpq parameters of a URL or DSN; an error never repeats the text.

    psycopg's own message quotes the string it could not parse, which may hold a
    password: only its shape survives here.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else None
    if scheme is not None and scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{name}: the scheme {scheme!r} is not PostgreSQL; expected "
            "postgresql://user@host:port/dbname or a key=value DSN"
        )
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception as exc:  # psycopg raises ProgrammingError for any bad string
        # libpq's own words come before its first quote; what it quotes is ours to hide.
        reason = str(exc).split('"', 1)[0].strip().rstrip(":") or "unreadable"
        if reason == "missing":
            reason = 'a key without "=" after it'
        raise ConfigError(
            f"{name} is not a libpq URL or key=value DSN ({reason}; the value is not shown, "
            "as it may hold a password)"
        ) from None
    for port in params.get("port", "").split(","):
        if port and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ConfigError(f"{name}: port {port!r} is not a TCP port (1..65535)")
    return params


def check_ca_file(core_url: str, path: str | None) -> None:
    """A CA file is for a TLS node and must hold a PEM certificate: refused now, naming it."""
    _target, tls = parse_core_url(core_url)
    if path is None:
        return
    if not tls:
        raise ConfigError(
            f"--core-ca-file is for TLS, but --core-url {core_url} is plaintext: use https://"
        )
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--core-ca-file {path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(f"--core-ca-file {path}: no PEM certificate in it")


def missing_port_notes(
    core_url: str | None, database_url: str, environ: Mapping[str, str]
) -> list[str]:
    """What a URL without a port resolves to, for a line at start (no node: core_url None)."""
    notes = []
    if core_url is not None:
        raw = core_url if "://" in core_url else f"http://{core_url}"
        if urlsplit(raw).port is None:
            target, _tls = parse_core_url(core_url)
            notes.append(f"--core-url {core_url} has no port: using {target}")
    params = database_params(database_url, "--database-url")
    if "port" not in params:
        port = environ.get("PGPORT", str(POSTGRES_DEFAULT_PORT))
        where = "PGPORT" if "PGPORT" in environ else "PostgreSQL's default"
        notes.append(f"--database-url has no port: using {port} ({where})")
    return notes
