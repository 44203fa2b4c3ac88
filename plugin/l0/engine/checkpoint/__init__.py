"""Token-state checkpoints: records, stores (SQLite, Redis) and the background
writer. Pure Python; no vLLM import.

:func:`open_store` lives here, above the store drivers (``sqlite_store``,
``redis_store``), which it imports only for the scheme a URL names: a driver
imports the store contract (``store``), never this.
"""
from __future__ import annotations

from l0.engine.checkpoint.store import DEFAULT_TTL_S, DEFAULT_URL, CheckpointStore, redact, sqlite_path


def open_store(url: str | None = None, ttl_s: int = DEFAULT_TTL_S) -> CheckpointStore:
    """Open the store a URL names. ``ValueError`` for an unknown scheme or a bad
    URL (message never contains a password)."""
    url = url or DEFAULT_URL
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from l0.engine.checkpoint.sqlite_store import SqliteStore
        return SqliteStore(sqlite_path(url), ttl_s)
    if scheme in ("redis", "rediss"):
        from l0.engine.checkpoint.redis_store import RedisStore
        return RedisStore(url, ttl_s)
    raise ValueError(f"l0: checkpoint store URL {redact(url)!r}: scheme must be sqlite, redis or rediss")
