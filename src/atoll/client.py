"""A Python client of Atoll's wire protocol (httpx for REST, websockets for the socket).

async with AtollClient("http://127.0.0.1:8000") as client:
    await client.login("ada@example.com", "correct horse")
    async with client.connect() as socket:
        ack = await socket.send_message("What is 17*23?")
        async for event in socket.run_events(ack["run_id"]):
            print(event["type"], event["data"])
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled"})


class ApiError(Exception):
    """A problem+json answer: ``status``, ``code`` and the whole ``problem``."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code')}: {problem.get('detail')}")
        self.status = status
        self.code = str(problem.get("code", "http_error"))
        self.problem = problem


def ends_run(event: dict[str, Any]) -> bool:
    """Whether ``event`` is the run's terminal event."""
    return event.get("type") in TERMINAL and event.get("parent_agent") is None


class AtollSocket:
    """One authenticated WebSocket."""

    def __init__(self, connection: ClientConnection, established: dict[str, Any]) -> None:
        self.connection = connection
        self.user_id: str = established["user_id"]
        self.connection_id: str = established["connection_id"]
        self.last_seq: dict[str, int] = {}
        self._pending: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame."""
        await self.connection.send(json.dumps(frame))

    async def receive(self) -> dict[str, Any]:
        """The next frame (events update ``last_seq``)."""
        if self._pending:
            return self._pending.pop(0)
        frame: dict[str, Any] = json.loads(await self.connection.recv())
        if "seq" in frame and "run_id" in frame:
            self.last_seq[frame["run_id"]] = frame["seq"]
        return frame

    async def _until(self, kind: str, **match: Any) -> dict[str, Any]:
        """Frames are kept in order; returns the first of ``kind`` whose fields ``match``
        (or an error frame)."""
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self.receive()
                if frame.get("type") == "error":
                    return frame
                if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
                    return frame
                skipped.append(frame)
        finally:
            self._pending[:0] = skipped

    async def send_message(
        self,
        content: str,
        *,
        thread_id: str | None = None,
        agent: str | None = None,
        multitask: str | None = None,
        client_id: str | None = None,
    ) -> dict[str, Any]:
        """Send a message; returns its ``ack`` (or the ``error`` frame).

        Without a ``client_id`` one is made up, to tell this message's ack from the
        acks of runs started elsewhere (another socket of the same user).
        """
        client_id = client_id or uuid.uuid4().hex
        frame: dict[str, Any] = {"type": "message", "content": content}
        for key, value in (
            ("thread_id", thread_id),
            ("agent", agent),
            ("multitask", multitask),
            ("client_id", client_id),
        ):
            if value is not None:
                frame[key] = value
        await self.send(frame)
        return await self._until("ack", client_id=client_id)

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a run; returns the ``ack``."""
        await self.send({"type": "cancel", "run_id": run_id})
        return await self._until("ack", run_id=run_id, message_id=None)

    async def resume(self, run_id: str, after: int) -> None:
        """Ask for the run's events after ``after``."""
        await self.send({"type": "resume", "run_id": run_id, "after": after})

    async def ping(self) -> dict[str, Any]:
        """Round-trip a ping."""
        await self.send({"type": "ping"})
        return await self._until("pong")

    async def run_events(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """The run's events as they arrive, up to and including its terminal event."""
        while True:
            frame = await self.receive()
            if frame.get("run_id") != run_id or "seq" not in frame:
                continue
            yield frame
            if ends_run(frame):
                return


class AtollClient:
    """REST calls with the current access token, and ``connect()`` for the socket."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport``: how REST calls reach the server; httpx's own network transport
        unless given (e.g. an ASGI transport that calls an app in the same process).
        ``connect()`` always opens a real WebSocket to ``base_url``."""
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.user: dict[str, Any] | None = None

    async def __aenter__(self) -> AtollClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self.http.aclose()

    def _headers(self, token: str | None = None) -> dict[str, str]:
        token = token or self.access_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/api/v1`` + ``path``; ``ApiError`` on a problem answer."""
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        response = await self.http.request(method, f"/api/v1{path}", headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"code": "http_error", "detail": response.text}
            raise ApiError(response.status_code, problem)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def _keep(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.access_token = answer["access_token"]
        self.refresh_token = answer["refresh_token"]
        self.user = answer["user"]
        return answer

    async def register(self, email: str, password: str, name: str | None = None) -> dict[str, Any]:
        """Create an account and keep its tokens."""
        body = {"email": email, "password": password, "name": name}
        return self._keep(await self.request("POST", "/auth/register", json=body))

    async def login(self, email: str, password: str) -> dict[str, Any]:
        """Log in and keep the tokens."""
        body = {"email": email, "password": password}
        return self._keep(await self.request("POST", "/auth/login", json=body))

    async def refresh(self) -> dict[str, Any]:
        """Rotate the tokens."""
        body = {"refresh_token": self.refresh_token}
        return self._keep(await self.request("POST", "/auth/refresh", json=body))

    async def logout(self) -> None:
        """End the session."""
        await self.request("POST", "/auth/logout")

    async def chat(self, message: str, **fields: Any) -> dict[str, Any]:
        """``POST /chat``."""
        result: dict[str, Any] = await self.request(
            "POST", "/chat", json={"message": message, **fields}
        )
        return result

    async def events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        """The run's logged events after ``after``."""
        page = await self.request("GET", f"/runs/{run_id}/events", params={"after": after})
        return list(page["items"])

    async def stream(self, run_id: str, after: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """The run's events over SSE (``Last-Event-ID`` = ``after``)."""
        headers = self._headers()
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        async with self.http.stream(
            "GET", f"/api/v1/runs/{run_id}/stream", headers=headers
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise ApiError(response.status_code, response.json())
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    @contextlib.asynccontextmanager
    async def connect(self, *, header_auth: bool = False) -> AsyncIterator[AtollSocket]:
        """Open the WebSocket and authenticate (first frame, or the header)."""
        url = self.base_url.replace("http", "ws", 1) + "/api/v1/ws"
        headers = self._headers() if header_auth else None
        async with websockets.connect(
            url, additional_headers=headers, compression=None, max_size=2**22
        ) as connection:
            if not header_auth:
                await connection.send(json.dumps({"type": "auth", "token": self.access_token}))
            established = json.loads(await connection.recv())
            if established.get("type") != "connection_established":
                raise ApiError(401, established)
            yield AtollSocket(connection, established)
