"""The pooled HTTP client for one upstream model server.

Errors from aiohttp are mapped here, at the boundary, to ``UpstreamError``
(no answer: connection refused, reset, or too slow); an HTTP error status is
an answer, not an exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from ._tensors import HEADER_LENGTH

__all__ = ["HOP_BY_HOP", "Answer", "Upstream", "UpstreamError"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class UpstreamError(Exception):
    """The upstream gave no HTTP answer (refused, reset, timed out)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's complete HTTP answer."""

    status: int
    body: bytes
    content_type: str
    header_length: str | None = None  # Inference-Header-Content-Length: binary tensors follow

    def framing(self) -> dict[str, str]:
        """The headers that say how to read ``body`` (content type, binary header length)."""
        headers = {"Content-Type": self.content_type}
        if self.header_length is not None:
            headers[HEADER_LENGTH] = self.header_length
        return headers


class Upstream:
    """One pooled ``aiohttp.ClientSession`` to ``base_url`` (keep-alive, no decompression).

    Open it with ``await start()`` (inside a running loop) and ``close()`` it.
    """

    def __init__(self, base_url: str, *, connections: int = 256) -> None:
        self.base_url = base_url.rstrip("/")
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool."""
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session; raises ``RuntimeError`` before ``start``."""
        if self._session is None:
            raise RuntimeError("upstream not started")
        return self._session

    async def post_json(
        self, target: str, body: bytes, headers: Mapping[str, str], timeout_s: float
    ) -> Answer:
        """POST ``body`` to ``target`` (path and query) and return the whole answer.

        ``headers`` may set the Content-Type (JSON unless they do). Raises
        ``UpstreamError`` when no answer arrives within ``timeout_s``.
        """
        send = CIMultiDict(headers)
        send.setdefault("Content-Type", "application/json")
        send["Accept-Encoding"] = "identity"
        timeout = aiohttp.ClientTimeout(total=max(0.001, timeout_s))
        try:
            async with self.session.post(
                self.base_url + target, data=body, headers=send, timeout=timeout
            ) as response:
                payload = await response.read()
                return Answer(
                    response.status,
                    payload,
                    response.content_type,
                    response.headers.get(HEADER_LENGTH),
                )
        except TimeoutError as exc:
            raise UpstreamError("upstream timed out", timed_out=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
