"""``l0.http(base_url)``: an OpenAI-compatible server over plain HTTP (httpx,
no SDK), with the surface ``l0.wrap`` drives, so one client serves both
transports:

    client = l0.wrap(l0.http("http://10.0.0.1:8000/v1"),
                     fallbacks=[l0.http("http://10.0.0.2:8000/v1")])
    stream = await client.chat.completions.create(model=..., messages=..., stream=True)
    async for chunk in stream:     # a chunk dict (an SDK chunk object when openai is installed)
        ...

``chat.completions.create`` and ``completions.create`` take the SDK's
keywords (``extra_body`` merged into the body, as the SDK does). With
``stream=True`` they answer an async iterator of chunks read by the one SSE
reader (:mod:`l0.client.sse`), in the type ``l0.wrap`` restamps its own
chunks in, so a stream never mixes dicts and SDK objects; otherwise the
response JSON as a dict. A non-200 answer raises
:class:`~l0.client.sse.StreamError` (``status_code``, ``response.headers``).
Unwrapped, it does no retries of its own: ``l0.wrap`` counts them.

Each request opens its own connection (no pool is kept across event loops:
``l0.structured_sync`` and tests run one loop per call). Every client this
package opens shares one TLS context (:func:`client`): httpx builds a new one
per client otherwise, loading the CA bundle each time (about 35 ms of CPU,
in the event loop: a fleet's streams resuming at once after a fault spent
seconds there).
"""
from __future__ import annotations

import functools
from typing import Any, AsyncIterator

from l0.client import chunks as ck
from l0.client.sse import achunks, error_of


@functools.lru_cache(maxsize=1)
def _tls() -> Any:
    import httpx
    return httpx.create_ssl_context()


def client(timeout: Any, headers: dict[str, str] | None = None) -> Any:
    """An ``httpx.AsyncClient`` with the shared TLS context (certificates
    verified as httpx's default does)."""
    import httpx
    return httpx.AsyncClient(timeout=timeout, headers=headers, verify=_tls())


class HttpClient:
    """``base_url``: the server's OpenAI root (``http://host:8000/v1``; a
    bare ``http://host:8000`` gets ``/v1``). ``api_key``: sent as a bearer
    token. ``connect_timeout_s`` bounds connecting; a stream's silences are
    bounded by ``l0.wrap``'s timeouts, a whole response by ``timeout_s``."""

    def __init__(self, base_url: str, api_key: str | None = None, *, headers: dict[str, str] | None = None,
                 connect_timeout_s: float = 5.0, timeout_s: float = 600.0) -> None:
        url = str(base_url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"l0.http: base_url must be an http(s) URL, not {base_url!r}")
        # with the SDK's trailing slash: an endpoint is named by its base URL, whichever client reaches it
        self.base_url = (url if url.endswith("/v1") else url + "/v1") + "/"
        self.default_headers = dict(headers or {})
        self.auth_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.completions = _Api(self, "/completions")
        self.chat = type("Chat", (), {})()
        self.chat.completions = _Api(self, "/chat/completions")

    def with_options(self, **_: Any) -> "HttpClient":
        """The SDK's ``with_options`` (``l0.wrap`` turns retries off; this
        client has none)."""
        return self

    async def close(self) -> None:
        """Nothing to close: connections live as long as their request."""

    def __repr__(self) -> str:
        return f"l0.http({self.base_url!r})"

    async def _post(self, path: str, params: dict) -> Any:
        import httpx

        body = {k: v for k, v in params.items() if k != "extra_body"}
        body.update(params.get("extra_body") or {})
        stream = bool(body.get("stream"))
        timeout = httpx.Timeout(connect=self.connect_timeout_s, read=None if stream else self.timeout_s,
                                write=30.0, pool=30.0)
        http = client(timeout, {**self.default_headers, **self.auth_headers})
        resp = None
        try:
            url = self.base_url.rstrip("/") + path
            resp = await http.send(http.build_request("POST", url, json=body), stream=stream)
            if resp.status_code != 200:
                await resp.aread()
                raise error_of(resp.status_code, dict(resp.headers), resp.text)
            if not stream:
                await resp.aread()
                return resp.json()
            opened, resp, http = _Stream(resp, http), None, None
            return opened
        finally:
            if resp is not None:
                await resp.aclose()
            if http is not None:
                await http.aclose()


class _Api:
    def __init__(self, owner: HttpClient, path: str) -> None:
        self._owner, self._path = owner, path

    async def create(self, **params: Any) -> Any:
        return await self._owner._post(self._path, params)


class _Stream:
    """One streamed response: iterate it for chunks; ``close()`` drops the
    connection (the server sees the client go and stops generating)."""

    def __init__(self, resp: Any, http: Any) -> None:
        self._resp, self._http = resp, http
        self._it: AsyncIterator[Any] | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._it is None:
            self._it = self._read()
        return self._it

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()

    async def _read(self) -> AsyncIterator[Any]:
        async for chunk in achunks(self._resp.aiter_lines()):
            yield ck.rebuild(chunk)

    async def close(self) -> None:
        try:
            if self._it is not None:
                await self._it.aclose()
            await self._resp.aclose()
        finally:
            await self._http.aclose()


def http(base_url: str, api_key: str | None = None, **kw: Any) -> HttpClient:
    """``l0.http(...)``: an :class:`HttpClient` (same arguments)."""
    return HttpClient(base_url, api_key, **kw)
