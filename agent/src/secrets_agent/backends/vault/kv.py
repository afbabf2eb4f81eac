"""KV reads on the agent's own event loop over aiohttp, as hvac would make them.

A read is the one Vault call every miss makes. Through hvac a miss cost the agent 1.4-1.5x what
hvac costs in a task process, however trimmed: the thread hop each way alone makes an hvac call
1.25x its in-process cost (``bench/uncached.py``'s "hvac through the agent's worker threads"
row). Here it is one request on a kept-alive connection of the loop: ~255 µs of CPU against
hvac's ~650-900 µs for the same read, and a miss through the agent ~0.7x hvac's.

It is hvac's request all the same: the URL from hvac's ``format_url`` and ``urljoin``, its
headers (``X-Vault-Request``, ``-Token``, ``-Namespace``), redirects followed, requests' CA bundle
by default, and for an error status the very exception hvac raises (``raise_for_error``), which
``errors.translate`` maps as before. hvac stays the client for everything else (logins,
renewals, the change feed's metadata calls). Used only where requests would send the read
straight to Vault's URL (no proxy for it, no netrc login for its host: ``environment.direct``);
otherwise reads go through hvac, which goes through the proxy or logs in as requests does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from typing import Any

import aiohttp
from yarl import URL

from secrets_agent.errors import ClosedError

_METHOD = "GET"
# Vault's own default max_request_size: no KV secret it stores is larger; an answer that is, is
# not Vault's (a misrouted proxy, a hostile endpoint) and is not held in memory.
MAX_ANSWER = 32 * 1024 * 1024


class NotJson(Exception):
    """Vault answered a read 200 with something other than a JSON object."""


class TooLarge(Exception):
    """An answer over ``MAX_ANSWER`` bytes."""


def tls_context(verify: bool | str, cert: tuple[str, str] | None) -> ssl.SSLContext:
    """What requests builds for ``verify`` and ``cert``: its CA bundle unless told otherwise."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        from requests.utils import DEFAULT_CA_BUNDLE_PATH  # certifi's bundle, as requests uses

        place = DEFAULT_CA_BUNDLE_PATH if verify is True else verify
        if os.path.isdir(place):
            context = ssl.create_default_context(capath=place)
        else:
            context = ssl.create_default_context(cafile=place)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


class KvReader:
    """GETs of Vault API paths on one aiohttp session (at most ``limit`` at a time; ``tls``
    for an https URL)."""

    def __init__(
        self,
        base_uri: str,
        namespace: str | None,
        tls: ssl.SSLContext | None,
        timeout: float,
        limit: int,
    ) -> None:
        from hvac.adapters import Adapter

        self._join = Adapter.urljoin
        self._base, self._namespace, self._timeout = base_uri, namespace, timeout
        self._reading = 0  # reads under way: ``close`` lets them finish first
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        connector = aiohttp.TCPConnector(limit=limit, ssl=True if tls is None else tls)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            trust_env=False,  # used only where the environment has nothing to say (see module)
        )

    async def get(self, api_path: str, token: str | None) -> dict[str, Any]:
        """The JSON object Vault answers; hvac's exception for an error status."""
        from hvac import utils

        if self._closed:  # a lookup that outlived its backend's reload
            raise ClosedError("the Vault reader is closed")
        while "//" in api_path:  # as hvac's adapter does before joining
            api_path = api_path.replace("//", "/")
        url = self._join(self._base, api_path)
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        if self._namespace:
            headers["X-Vault-Namespace"] = self._namespace
        self._reading += 1
        self._idle.clear()
        try:
            async with self._session.get(URL(url, encoded=True), headers=headers) as response:
                status = response.status
                body = await _read(response)
        finally:
            self._reading -= 1
            if not self._reading:
                self._idle.set()
        if status >= 400:
            # The exception type is what matters (``translate`` words the error itself, never
            # with Vault's text); the body's ``errors`` are kept on it as hvac keeps them.
            errors = _errors(body) if response.content_type == "application/json" else None
            utils.raise_for_error(_METHOD, url, status, errors=errors)
        try:
            answer = json.loads(body) if status == 200 else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise NotJson(f"HTTP {status}")
        return answer

    @property
    def closed(self) -> bool:
        """Its connections are closed (not only its reads refused)."""
        return self._session.closed

    async def close(self) -> None:
        """Close the connections once the reads under way are answered (as hvac's threads
        finish a started call), or after ``timeout``: a reload's lookups in flight still get
        their answer."""
        self._closed = True
        if self._session.closed:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await self._idle.wait()
        await self._session.close()


async def _read(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, up to ``MAX_ANSWER`` bytes."""
    if (response.content_length or 0) > MAX_ANSWER:
        raise TooLarge(f"{response.content_length} bytes")
    chunks, size = [], 0
    while chunk := await response.content.read(MAX_ANSWER + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            raise TooLarge(f"over {MAX_ANSWER} bytes")
    return b"".join(chunks)


def _errors(body: bytes) -> Any:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("errors") if isinstance(answer, dict) else None
