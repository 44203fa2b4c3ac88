"""The checkpoint store interface and the URLs that name a backend.

Contract of every :class:`CheckpointStore`:

* ``get(key)`` returns the :class:`~l0.contract.Record`, or ``None``
  when there is none (never written, expired, deleted). A stored value that
  does not decode raises :class:`~l0.contract.CorruptRecord`.
* ``put_many(records)`` writes each record under its key (last write wins),
  with the store's TTL; one round trip / transaction for the batch.
* ``delete(key)`` removes a record; deleting a missing key is no error.
* Every method raises :class:`StoreUnavailable` when the store can't be
  reached (the writer retries; the HTTP route answers 503).
* Keys are checked by :func:`check_key` (:class:`BadKey`, a ``ValueError``).

Backends, chosen by :func:`l0.engine.checkpoint.open_store`: ``sqlite:///abs/path.db`` (or
``sqlite://~/rel``) — embedded default, WAL, file created 0600 — and
``redis://[:password@]host:port/db`` / ``rediss://`` (TLS) — shared by a fleet.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from l0.contract import KEY_RULE, Record, is_key

ERR_KEY = f"l0: checkpoint key must be {KEY_RULE}"
DEFAULT_TTL_S = 24 * 3600
DEFAULT_URL = "sqlite:///~/.cache/l0/checkpoints.sqlite3"


class BadKey(ValueError):
    """A checkpoint key is malformed (HTTP 400)."""


class StoreUnavailable(RuntimeError):
    """The store can't be reached right now (HTTP 503; the writer retries)."""


def check_key(key: object) -> str:
    if not is_key(key):
        raise BadKey(ERR_KEY)
    return key


@runtime_checkable
class CheckpointStore(Protocol):
    url: str  # redacted: safe to log

    def get(self, key: str) -> Record | None: ...

    def put_many(self, records: Iterable[Record]) -> None:
        """Write records: anything with ``.key`` and ``.to_json()`` (a
        :class:`Record`, or the writer's snapshots that encode as one)."""

    def delete(self, key: str) -> None: ...

    def close(self) -> None: ...


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs`` → /abs; ``sqlite://~/x`` or ``sqlite:///~/x`` → ~/x expanded."""
    rest = url[len("sqlite://"):]
    if rest.startswith("/~"):
        rest = rest[1:]
    if not rest or rest == "/":
        raise ValueError(f"l0: checkpoint store URL {url!r} names no file")
    return Path(os.path.expanduser(rest))
