"""HTTP limits on purpose (issue 23, item 5): request heads, sockets per address, and
secrets kept out of logs by their shape — each against a real server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
import websockets

from atoll.client import AtollClient
from atoll.server.serve import AtollServer, running_server
from atoll.server.services import Services

from serving import PASSWORD, make_settings, serve_process
from support import until

pytestmark = [pytest.mark.e2e, pytest.mark.security]

UPGRADE = (
    b"GET /api/v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)
PLAIN = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, pieces: Iterable[bytes]) -> bytes:
    """Send ``pieces`` (one write each), then read the answer until the server closes
    the connection or has sent a whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before everything was sent: the answer is waiting
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                return answer
            if not chunk:
                return answer
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            if b"\r\n\r\n" in answer and head.startswith(b"HTTP/1.1 101"):
                return answer  # switched to WebSocket: nothing more to read here
            if b"\r\n\r\n" in answer:
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0]:
                    return answer


def refused(answer: bytes, status: int, code: str) -> dict[str, object]:
    """The problem JSON of a refusal with ``status`` and ``code``."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert b"content-type: application/problem+json" in head.lower(), head
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code), problem
    return problem


def headers(count: int, size: int = 10) -> bytes:
    return b"".join(b"X-H%d: %s\r\n" % (n, b"v" * size) for n in range(count))


async def test_request_heads_over_the_limits_get_431_problem_json_on_every_door(
    tmp_path: Path,
) -> None:
    """F5: a 100,000-character Authorization header was a text/plain 400 (h11 refused it
    while incomplete), a 100,000-byte X-A header and 2,000 header lines were accepted
    (a complete head passed h11 whatever its size): now one limit, answered 431."""
    async with running_server(make_settings(tmp_path / "data")) as (url, _):
        port = port_of(url)
        big_auth = b"Authorization: Bearer " + b"a" * 100_000 + b"\r\n"
        big_header = b"X-A: " + b"a" * 100_000 + b"\r\n"
        for start in (PLAIN, UPGRADE):
            for extra in (big_auth, big_header, headers(2_000), headers(101)):
                answer = await asyncio.to_thread(exchange, port, [start + extra + b"\r\n"])
                refused(answer, 431, "headers_too_large")
            # Trickled in pieces, the head is refused once it passes the limit.
            pieces = [start, *[b"X-Slow: " + b"s" * 4000 + b"\r\n"] * 6]
            answer = await asyncio.to_thread(exchange, port, pieces)
            refused(answer, 431, "headers_too_large")
            long_line = start.replace(b"GET /", b"GET /" + b"x" * 9000, 1) + b"\r\n"
            answer = await asyncio.to_thread(exchange, port, [long_line])
            refused(answer, 414, "uri_too_long")
        within = PLAIN + headers(95, 100) + b"\r\n"  # 95 headers, ~11 KB: under both limits
        answer = await asyncio.to_thread(exchange, port, [within])
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        upgrade = UPGRADE + headers(90, 100) + b"\r\n"
        answer = await asyncio.to_thread(exchange, port, [upgrade])
        assert answer.startswith(b"HTTP/1.1 101"), answer[:200]


async def test_a_malformed_request_is_problem_json_too(tmp_path: Path) -> None:
    """A request h11 refuses for another reason (here a NUL in a header value, which
    would have reached the database as a Last-Event-ID) was a text/plain 400."""
    async with running_server(make_settings(tmp_path / "data")) as (url, _):
        port = port_of(url)
        for start in (PLAIN, UPGRADE):
            answer = await asyncio.to_thread(exchange, port, [start + b"X-A: a\x00b\r\n\r\n"])
            refused(answer, 400, "malformed_request")


async def test_the_head_limits_are_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", max_header_bytes=4096, max_headers=20)
    async with running_server(settings) as (url, _):
        port = port_of(url)
        for start in (PLAIN, UPGRADE):
            answer = await asyncio.to_thread(exchange, port, [start + headers(21) + b"\r\n"])
            assert b"more than 20 header lines" in answer
            refused(answer, 431, "headers_too_large")
            big = start + headers(10, 450) + b"\r\n"
            answer = await asyncio.to_thread(exchange, port, [big])
            assert b"larger than 4096 bytes" in answer
            refused(answer, 431, "headers_too_large")


# -- sockets per client address ---------------------------------------------------------


def services_of(server: AtollServer) -> Services:
    services: Services = server.config.app.state.services
    return services


async def open_socket(url: str, address: str) -> websockets.ClientConnection:
    """A WebSocket from ``address`` (``X-Forwarded-For``, believed from 127.0.0.1)."""
    ws_url = url.replace("http", "ws", 1) + "/api/v1/ws"
    return await websockets.connect(ws_url, additional_headers={"X-Forwarded-For": address})


async def signed_in(socket: websockets.ClientConnection, token: str) -> None:
    await socket.send(json.dumps({"type": "auth", "token": token}))
    assert json.loads(await socket.recv())["type"] == "connection_established"


async def refused_socket(url: str, address: str) -> dict[str, object]:
    """The problem JSON of the HTTP answer refusing a socket from ``address``."""
    with pytest.raises(websockets.InvalidStatus) as refusal:
        await open_socket(url, address)
    response = refusal.value.response
    assert response.status_code == 429, response
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    problem: dict[str, object] = json.loads(response.body or b"{}")
    assert problem["code"] == "too_many_sockets", problem
    return problem


async def test_sockets_per_address_are_capped_unauthenticated_ones_tighter(
    tmp_path: Path,
) -> None:
    """Issue 23: 3,000 unauthenticated and 2,000 signed-in sockets from one address were
    accepted. Now the upgrade is answered 429 ``too_many_sockets`` past either limit, for
    the client address the login limits use (X-Forwarded-For from a trusted proxy)."""
    settings = make_settings(
        tmp_path / "data", max_sockets_per_address=5, max_unauthenticated_sockets_per_address=3,
        max_ws_connections=20, forwarded_allow_ips="127.0.0.1",
    )  # fmt: skip
    async with running_server(settings) as (url, server):
        client = AtollClient(url)
        await client.register("sockets@example.com", PASSWORD)
        token = str(client.access_token)
        silent = [await open_socket(url, "10.0.0.1") for _ in range(3)]
        problem = await refused_socket(url, "10.0.0.1")  # a 4th that has not signed in
        assert "3 unauthenticated" in str(problem["detail"])
        sockets = services_of(server).sockets
        other = await open_socket(url, "10.0.0.2")  # another address is not affected
        await signed_in(silent[0], token)  # one signs in: room for one more silent one
        silent.append(await open_socket(url, "10.0.0.1"))
        for socket in silent[1:]:
            await signed_in(socket, token)
        silent.append(await open_socket(url, "10.0.0.1"))  # 5 open, 1 of them silent
        assert sockets.count("10.0.0.1") == (5, 1)
        problem = await refused_socket(url, "10.0.0.1")
        assert "5 open" in str(problem["detail"])
        await silent.pop().close()  # a socket that ends frees its place
        await until(lambda: sockets.count("10.0.0.1") == (4, 0), what="the slot freed")
        silent.append(await open_socket(url, "10.0.0.1"))
        for socket in [*silent, other]:
            await socket.close()
        await until(lambda: sockets.count("10.0.0.1") == (0, 0), what="every slot freed")
        await client.aclose()


async def test_a_socket_that_never_signs_in_frees_its_place_at_the_auth_timeout(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "data", max_unauthenticated_sockets_per_address=2, ws_auth_timeout=0.3
    )
    async with running_server(settings) as (url, server):
        silent = [await open_socket(url, "127.0.0.1") for _ in range(2)]
        await refused_socket(url, "127.0.0.1")
        for socket in silent:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await socket.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
        sockets = services_of(server).sockets
        await until(lambda: sockets.count("127.0.0.1") == (0, 0), what="the slots freed")
        again = await open_socket(url, "127.0.0.1")
        await again.close()


# -- secrets in logs ----------------------------------------------------------------------


async def test_secrets_in_urls_are_redacted_from_the_access_log_by_their_shape(
    tmp_path: Path,
) -> None:
    """Issue 23: ``?x=atk_key_…`` and a key in a path were logged verbatim (redaction went
    by parameter name only)."""
    key = "atk_key_Qm9vX2Jhcg.Zm9vYmFyYmF6cXV4LXNlY3JldC12YWx1ZS0xMjM0NTY3ODkw"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3JfeCJ9.c2lnbmF0dXJlLXZhbHVl"
    with serve_process(tmp_path / "data") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get(f"/api/v1/me?x={key}")).status_code == 401
            assert (await http.get(f"/api/v1/threads/{key}")).status_code == 401
            await http.get(f"/healthz?session={jwt}&last=1")
        await until(lambda: "/healthz?session=" in server.log_text(), what="the access log line")
        log = server.log_text()
        assert key not in log and "Zm9vYmFy" not in log and jwt not in log, log[-2000:]
        assert "/api/v1/me?x=atk_[redacted]" in log
        assert "/api/v1/threads/atk_[redacted]" in log
        assert "/healthz?session=[redacted]&last=1" in log
