"""Redis checkpoint store: shared by a fleet of replicas.

Every record is one string value under ``l0:ckpt:<key>`` written with ``SET
... EX ttl`` (a TTL on every record, no exceptions), a batch in one pipeline.
``redis://`` and ``rediss://`` (TLS) URLs, with a password or user:password.
The driver (``redis`` on PyPI) is imported here, on first use. Errors are
raised without the URL's password (:func:`l0.engine.checkpoint.store.redact`).
"""
from __future__ import annotations

from typing import Iterable

from l0.contract import Record
from l0.engine.checkpoint.store import StoreUnavailable, check_key, redact

PREFIX = "l0:ckpt:"


class RedisStore:
    def __init__(self, url: str, ttl_s: int, timeout_s: float = 2.0) -> None:
        try:
            import redis
        except ImportError:
            raise RuntimeError("l0: a redis:// checkpoint store needs the redis package: "
                               "pip install 'l0[redis]'") from None
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ResponseError, OSError)
        self.url = redact(url)
        self.ttl_s = ttl_s
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry_on_timeout=False)
        except ValueError as exc:
            raise ValueError(f"l0: bad checkpoint store URL {self.url!r}: {type(exc).__name__}") from None

    def _fail(self, exc: Exception) -> StoreUnavailable:
        # Never str(exc) blindly: some driver messages echo connection details.
        return StoreUnavailable(f"l0: redis store {self.url}: {type(exc).__name__}")

    def get(self, key: str) -> Record | None:
        check_key(key)
        try:
            value = self._r.get(PREFIX + key)
        except self._errors as exc:
            raise self._fail(exc) from None
        return None if value is None else Record.from_json(value)

    def put_many(self, records: Iterable[Record]) -> None:
        items = [(PREFIX + check_key(r.key), r.to_json()) for r in records]
        if not items:
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for k, v in items:
                pipe.set(k, v, ex=self.ttl_s)
            pipe.execute()
        except self._errors as exc:
            raise self._fail(exc) from None

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self._r.delete(PREFIX + key)
        except self._errors as exc:
            raise self._fail(exc) from None

    def close(self) -> None:
        self._r.close()
