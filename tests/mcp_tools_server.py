"""A real MCP server for the tests, written with the ``mcp`` SDK's server side.

``python tests/mcp_tools_server.py stdio``, ``… http PORT`` (streamable HTTP at /mcp,
answers as SSE) or ``… http-json PORT`` (answers as plain JSON). Its tools: arithmetic,
an error, a crash mid-call, a hang, a result that never ends, per-session memory (to
show no session state crosses calls) and the headers it was sent.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

server = MCPServer("atoll-test-tools")
remembered: dict[str, str] = {}
"""What each session was told, by session (its Mcp-Session-Id over HTTP; over stdio a
process is one session)."""


def session_of(ctx: Context) -> str:
    return (ctx.headers or {}).get("mcp-session-id", "stdio")


@server.tool()
def add(a: Annotated[int, Field(description="first")], b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@server.tool()
def big(size: int) -> str:
    """A text of ``size`` characters."""
    return "y" * size


@server.tool()
def refuse(reason: str) -> str:
    """Always fails, saying why."""
    raise ValueError(f"refused: {reason}")


@server.tool()
async def crash() -> str:
    """Kills this server in the middle of the call."""
    await anyio.sleep(0.05)
    os._exit(3)


def wire() -> int:
    """The descriptor the SDK's stdio transport writes its messages to (it moves them off
    fd 1, so that a stray print cannot corrupt them)."""
    from mcp.server import stdio as transport

    claim = transport._claims.get(1)
    return claim.private_fd if claim is not None and claim.private_fd is not None else 1


@server.tool()
def endless() -> str:
    """Writes one message that never ends, straight to the wire (stdio only): a client that
    reads a message whole before bounding it waits for ever and grows without limit."""
    fd = wire()
    os.write(fd, b'{"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "')
    while True:
        os.write(fd, b"y" * 65536)


@server.tool()
async def hang() -> str:
    """Never answers."""
    await anyio.sleep(3600)
    return "late"


@server.tool()
def remember(value: str, ctx: Context) -> str:
    """Remember a value in this session."""
    remembered[session_of(ctx)] = value
    return "ok"


@server.tool()
def recall(ctx: Context) -> str:
    """What this session was told, if anything."""
    return remembered.get(session_of(ctx), "nothing")


@server.tool()
def header(name: str, ctx: Context) -> Any:
    """A request header (HTTP only)."""
    return (ctx.headers or {}).get(name.lower(), "absent")


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        json_response = sys.argv[1] == "http-json"
        server.run(
            "streamable-http", host="127.0.0.1", port=int(sys.argv[2]), json_response=json_response
        )
