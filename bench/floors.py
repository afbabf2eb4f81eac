"""The baselines the agent is measured against, started by the bench itself in the same run.

Floor A: a minimal asyncio Protocol answering every request on a kept-alive Unix socket with a
fixed ~40-byte JSON body, read by stdlib ``http.client`` — the cheapest HTTP/1.1 lookup Python
can do. Floor B: a 64-byte echo on the same kind of socket — the cost of the round trip alone.
Floor C: Floor A's server plus one decryption of a cached value per answer — what keeping values
encrypted in the cache costs on its own. Floor U: Floor A's server on uvloop, the agent's loop.
Both are reported, to read the agent's ratio against. Floor L (client side): the least an awaited
lookup can cost on asyncio's own loop — one kept-alive connection to the agent whose reader stays
registered, the request sent at once, one future per answer, the client's own request building
and answer parsing — against which the async client's CPU per lookup is read.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Awaitable, Callable

FLOOR_A_SERVER = r"""
import asyncio, sys
BODY = b'{"kind":"variable","id":"k","value":"v0000"}'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
          + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

class Floor(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4:]
            self.transport.write(ANSWER)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Floor, path=sys.argv[1], backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

# Floor A's server decrypting one cached value per answer as the agent's cache does (the value
# stays a Fernet token in the cache, so every hit pays this): what the constraint alone costs.
FLOOR_C_SERVER = FLOOR_A_SERVER.replace(
    "import asyncio, sys\n",
    "import asyncio, sys\n"
    "from secrets_agent.lookup.cipher import Cipher\n"
    "CIPHER = Cipher([]); SEALED = CIPHER.seal('value-000000-' + 'x' * 64)\n",
).replace(
    "            self.transport.write(ANSWER)",
    "            CIPHER.unseal(SEALED)\n            self.transport.write(ANSWER)",
)

# Floor A's server on uvloop, the loop the agent runs on by default: reported, so the agent's
# ratio can be read against the floor its own loop allows as well.
FLOOR_U_SERVER = FLOOR_A_SERVER.replace("asyncio.run(main())", "import uvloop; uvloop.run(main())")

FLOOR_B_SERVER = r"""
import asyncio, sys
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(Echo, path=sys.argv[1], backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


def floor_a_client(path: str) -> Callable[[], None]:
    """One kept-alive ``http.client`` connection; each call is one GET and its answer."""
    conn = _UnixHTTPConnection(path)

    def once() -> None:
        conn.request("GET", "/v1/variables/k")
        response = conn.getresponse()
        if response.status != 200 or not response.read():
            raise RuntimeError("floor A answered wrongly")

    return once


def floor_b_client(path: str) -> Callable[[], None]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    message = b"x" * 64

    def once() -> None:
        sock.sendall(message)
        received = 0
        while received < len(message):
            received += len(sock.recv(65536))

    return once


def floor_l_client(
    path: str, loop: asyncio.AbstractEventLoop
) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    """Floor L: an awaited ``bench_0`` lookup from the agent with nothing but what asyncio's loop
    needs (no pool, no timeout, no retry); and how to close it."""
    from secrets_agent_client.wire import Response, lookup_path, parse_response, request_bytes

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    buffer, view = bytearray(), memoryview(bytearray(65536))
    waiting: list[asyncio.Future[Response]] = []

    def readable() -> None:
        n = sock.recv_into(view)
        buffer.extend(view[:n])
        parsed = parse_response(buffer, head_only=False, eof=n == 0)
        if parsed is not None:
            waiting.pop().set_result(parsed[0])

    loop.add_reader(sock.fileno(), readable)

    target = lookup_path("variables", "bench_0", None, False)
    assert target is not None

    async def once() -> None:
        sock.send(request_bytes("GET", target, None))
        answer = loop.create_future()
        waiting.append(answer)
        response = await answer
        if response.status != 200 or json.loads(response.body)["value"] is None:
            raise RuntimeError("floor L answered wrongly")

    def close() -> None:
        loop.remove_reader(sock.fileno())
        sock.close()

    return once, close
