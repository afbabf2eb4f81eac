"""The baselines the agent is measured against, started by the bench itself in the same run.

Floor A: a minimal asyncio Protocol answering every request on a kept-alive Unix socket with a
fixed ~40-byte JSON body, read by stdlib ``http.client`` — the cheapest HTTP/1.1 lookup Python
can do. Floor B: a 64-byte echo on the same kind of socket — the cost of the round trip alone.
Floor C: Floor A's server plus one decryption of a cached value per answer — what keeping values
encrypted in the cache costs on its own. Floor U: Floor A's server on uvloop, the agent's loop.
Both are reported, to read the agent's ratio against.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable

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
