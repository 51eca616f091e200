"""Is a shared service there? A short, bounded probe of an MLflow tracking server or a
database URL, so a command fails at start with one line naming the URI instead of
hanging in a client's retries."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bgbias.core.errors import BgbiasError

PROBE_TIMEOUT = 5.0  # seconds; a service on the network answers far sooner


def redact(uri: str) -> str:
    """The URI without its password (it goes into error messages and logs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe(uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the service answers, else why not (a short reason)."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    try:
        if is_server(uri):
            return _probe_http(uri, timeout)
        if scheme == "postgresql":
            return _probe_postgresql(uri, timeout)
        if scheme == "sqlite":
            folder = Path(uri.removeprefix("sqlite:///")).parent
            return None if folder.is_dir() else f"folder {folder} does not exist"
        return _probe_tcp(uri, timeout)
    except (OSError, ValueError) as exc:
        return _reason(exc)


def require(uri: str, key: str, timeout: float = PROBE_TIMEOUT) -> None:
    reason = probe(uri, timeout)
    if reason is not None:
        raise BgbiasError(f"{key}: {redact(uri)} unreachable ({reason})")


def _probe_http(uri: str, timeout: float) -> str | None:
    # The tracking server's own liveness endpoint: answers "OK" without touching its database.
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:
            body = answer.read(100).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from /health: not an MLflow tracking server?"
    except urllib.error.URLError as exc:
        return _reason(exc.reason if isinstance(exc.reason, Exception) else OSError(str(exc.reason)))
    return None if body == "OK" else f"/health answered {body[:40]!r}: not an MLflow tracking server?"


def _probe_postgresql(uri: str, timeout: float) -> str | None:
    import psycopg

    parts = urlsplit(uri)
    conninfo = urlunsplit(parts._replace(scheme="postgresql"))  # drop a SQLAlchemy driver suffix
    try:
        psycopg.connect(conninfo, connect_timeout=max(1, int(timeout))).close()
    except psycopg.Error as exc:
        # libpq: 'connection failed: connection to server at "h", port 5432 failed: Connection refused\n\tIs ...'
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return first.rsplit("failed: ", 1)[-1].strip()
    return None


def _probe_tcp(uri: str, timeout: float) -> str | None:
    parts = urlsplit(uri)
    if not parts.hostname or not parts.port:
        return None  # nothing to probe without a host and port (e.g. a default port): the client will tell
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer (timed out)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror}"
    return str(exc) or type(exc).__name__
