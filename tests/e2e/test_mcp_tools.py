"""MCP tools (issue 16): real MCP servers written with the SDK's server side
(tests/mcp_tools_server.py), over stdio and streamable HTTP, driven by real agent runs
of a live Atoll server; the model is the OpenAI-compatible fake, told which tool to
call ("call: NAME {json}")."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from atoll.client import AtollClient
from atoll.errors import ConfigurationError
from atoll.runtime.builtins import builtin_registry
from atoll.runtime.ids import new_id
from atoll.runtime.tools.mcp import McpServer, discover_mcp_tools
from atoll.server.serve import running_server
from atoll.server.services import running_services
from atoll.testing import ScriptedModel, call_tool, run_agent, say
from integration.fake_openai import API_KEY, serve_fake_openai

from ports import free_port
from serving import PASSWORD, make_settings
from support import until

pytestmark = [pytest.mark.e2e]
SERVER = str(Path(__file__).resolve().parents[1] / "mcp_tools_server.py")


def stdio(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER, "stdio"], **extra}


@contextmanager
def served_mcp(mode: str) -> Iterator[str]:
    """The test MCP server over streamable HTTP (``mode``: ``http`` answers as SSE,
    ``http-json`` as JSON), as a process of its own."""
    port = free_port()
    process = subprocess.Popen([sys.executable, SERVER, mode, str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the MCP server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def http_mcp() -> Iterator[str]:
    """The test MCP server over streamable HTTP (SSE answers)."""
    with served_mcp("http") as url:
        yield url


@asynccontextmanager
async def atoll_with(
    servers: dict[str, Any], tmp_path: Path, **overrides: Any
) -> AsyncIterator[str]:
    async with serve_fake_openai() as fake:
        settings = make_settings(
            tmp_path / "data", llm_provider="openai", llm_base_url=fake.base_url,
            llm_api_key=API_KEY, llm_model="fake-model", mcp_servers=servers,
            tool_calls_per_minute=1000, **overrides,
        )  # fmt: skip
        async with running_server(settings) as (url, _):
            yield url


async def call(client: AtollClient, tool: str, **arguments: Any) -> tuple[dict[str, Any], str]:
    """Ask the assistant to call ``tool``; its ``tool_completed`` data and the answer."""
    accepted = await client.chat(f"call: {tool} {json.dumps(arguments)}", agent="assistant")
    events = [e async for e in client.stream(accepted["run"]["id"])]
    assert events[-1]["type"] == "agent_completed", events[-1]
    completed = [e["data"] for e in events if e["type"] == "tool_completed"]
    assert len(completed) == 1 and completed[0]["tool"] == tool
    return completed[0], events[-1]["data"]["message"]["content"]


async def user(url: str, email: str) -> AtollClient:
    client = AtollClient(url)
    await client.register(email, PASSWORD)
    return client


async def test_stdio_and_http_servers_tools_run_in_agent_runs(
    tmp_path: Path, http_mcp: str
) -> None:
    servers = {
        "calc": stdio(),
        "web": {"url": http_mcp, "headers": {"X-Team": "blue"}},
        "ops": stdio(roles=["admin"], tools=["shout"]),
    }
    async with atoll_with(servers, tmp_path) as url:
        ada = await user(url, "ada@example.com")
        tools = {t["name"]: t for t in await ada.request("GET", "/tools")}
        assert {"calc__add", "calc__crash", "web__shout", "web__header"} <= set(tools)
        assert tools["calc__add"]["parameters"]["properties"]["a"]["type"] == "integer"
        assert not [name for name in tools if name.startswith("ops__")]  # admins only
        # stdio: the call goes to a fresh server process and back through the model.
        added, answer = await call(ada, "calc__add", a=2, b=3)
        assert added["ok"] and added["result"] == {"result": 5}
        assert '"result":5' in answer.replace(" ", "")
        # HTTP, with the configured headers.
        header, _ = await call(ada, "web__header", name="X-Team")
        assert header["ok"] and header["result"] == "blue"
        # Arguments are checked against the server's schema before anything is sent.
        bad, _ = await call(ada, "calc__add", a="two", b=3)
        assert not bad["ok"] and bad["error"]["code"] == "invalid_arguments"
        # A long text is cut before the model (and the event log) see it; a flood past the
        # SDK's 1 MiB event limit is refused by the SDK: a tool error, the run goes on.
        flood, _ = await call(ada, "web__big", size=300_000)
        # The event shows a preview of the result the model got: 1,000 characters, and how
        # many more there were — the cut text, not the 300,000 the server sent.
        more = re.search(r"… \((\d+) more characters\)$", flood["result"])
        assert flood["ok"] and more is not None
        assert 1_000 + int(more.group(1)) < 100_100
        deluge, _ = await call(ada, "web__big", size=2_000_000)
        assert not deluge["ok"] and deluge["error"]["code"] == "tool_error"
        # The server says the call failed: a tool error, and the run goes on.
        refused, _ = await call(ada, "web__refuse", reason="no")
        assert not refused["ok"] and refused["error"]["code"] == "tool_error"
        # Outside the user's roles: refused by the dispatcher, as any tool.
        forbidden, _ = await call(ada, "ops__shout", text="hi")
        assert forbidden["error"]["code"] == "tool_forbidden"
        await ada.aclose()


async def test_no_mcp_session_state_crosses_runs_or_users(tmp_path: Path, http_mcp: str) -> None:
    async with atoll_with({"web": {"url": http_mcp}}, tmp_path) as url:
        ada, bob = await user(url, "ada@example.com"), await user(url, "bob@example.com")
        told, _ = await call(ada, "web__remember", value="ada's secret")
        assert told["ok"]
        for client in (bob, ada):  # a session per invocation: not even Ada's next run sees it
            recalled, answer = await call(client, "web__recall")
            assert recalled["result"] == {"result": "nothing"}
            assert "secret" not in answer
        await ada.aclose()
        await bob.aclose()


def mcp_processes() -> list[psutil.Process]:
    """The stdio MCP server processes this test process started (and that are alive)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if SERVER in child.cmdline() and "stdio" in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


async def test_a_server_that_crashes_or_hangs_mid_call_is_a_tool_error(
    tmp_path: Path, http_mcp: str
) -> None:
    servers = {"calc": stdio(), "slow": stdio(timeout=1.5), "web": {"url": http_mcp}}
    async with atoll_with(servers, tmp_path) as url:
        ada = await user(url, "ada@example.com")
        crashed, _ = await call(ada, "calc__crash")
        assert not crashed["ok"] and crashed["error"]["code"] == "tool_error"
        assert crashed["error"]["message"] == "the MCP server 'calc' exited with status 3"
        again, _ = await call(ada, "calc__add", a=1, b=1)  # the next call starts afresh
        assert again["result"] == {"result": 2}
        hung, _ = await call(ada, "slow__hang")
        assert not hung["ok"] and hung["error"]["code"] == "tool_timeout"
        # The hung server's process was ended with its session, not left behind.
        await until(lambda: not mcp_processes(), within=10, what="stdio MCP servers gone")
        # The HTTP server dies in the middle of a call: a tool error, the run completes.
        died, _ = await call(ada, "web__crash")
        assert not died["ok"] and died["error"]["code"] in ("tool_error", "tool_timeout")
        await ada.aclose()


async def test_an_unreachable_server_stops_the_start_naming_it(tmp_path: Path) -> None:
    servers = {"gone": {"url": f"http://127.0.0.1:{free_port()}/mcp"}}
    with pytest.raises(ConfigurationError, match="MCP server 'gone' could not be reached"):
        async with running_services(make_settings(tmp_path / "data", mcp_servers=servers)):
            pass


async def test_one_agent_invocation_keeps_one_session_and_the_next_run_gets_a_new_one(
    http_mcp: str,
) -> None:
    """The calls of one invocation share its session (the server remembers within it);
    the next run, the same user's, starts with a fresh one."""
    registry = builtin_registry()
    registry.register_tools(await discover_mcp_tools([McpServer(name="web", url=http_mcp)]))
    script = (
        call_tool("web__remember", value="kept"),
        call_tool("web__recall"),
        say("done"),
    )
    user_id = new_id("usr")
    first = await run_agent(
        "assistant", "remember", registry=registry, model=ScriptedModel(*script), user_id=user_id
    )
    assert [r.result for r in first.tool_results()] == [{"result": "ok"}, {"result": "kept"}]
    second = await run_agent(
        "assistant", "recall", registry=registry, user_id=user_id,
        model=ScriptedModel(call_tool("web__recall"), say("done")),
    )  # fmt: skip
    assert [r.result for r in second.tool_results()] == [{"result": "nothing"}]


async def test_results_are_bounded_in_bytes_while_they_are_read(
    tmp_path: Path, http_mcp: str
) -> None:
    """Issue 23: docs/integrations.md promised a 1 MiB limit that did not exist — a 30-100 MB
    result was bounded only by the timeout. Now every message is counted as it arrives and
    refused past ATOLL_MCP_MAX_RESULT_BYTES, on stdio and HTTP (SSE or JSON answers); one
    that never ends is refused long before the call's timeout would end it."""
    with served_mcp("http-json") as json_mcp:
        servers = {
            "calc": stdio(timeout=120),
            "web": {"url": http_mcp},
            "plain": {"url": json_mcp},
        }
        async with atoll_with(servers, tmp_path, mcp_max_result_bytes=200_000) as url:
            ada = await user(url, "ada@example.com")
            for tool in ("calc__big", "web__big", "plain__big"):
                fits, _ = await call(ada, tool, size=90_000)  # ~180 KB: as text and structured
                # The whole 90,000 characters came through (the event shows a preview).
                preview = {"result": "y" * 1_000 + "… (89000 more characters)"}
                assert fits["ok"] and fits["result"] == preview, tool
                flood, _ = await call(ada, tool, size=300_000)
                assert not flood["ok"] and flood["error"]["code"] == "tool_error", flood
                server = tool.split("__")[0]
                assert flood["error"]["message"] == (
                    f"the MCP server {server!r} sent a message larger than 200000 bytes "
                    "(ATOLL_MCP_MAX_RESULT_BYTES); it was not read"
                )
            endless, _ = await call(ada, "calc__endless")
            assert endless["error"]["code"] == "tool_error", endless  # not tool_timeout (120 s)
            assert "larger than 200000 bytes" in endless["error"]["message"]
            await until(lambda: not mcp_processes(), within=10, what="stdio MCP servers gone")
            again, _ = await call(ada, "calc__add", a=1, b=2)  # the next call starts afresh
            assert again["result"] == {"result": 3}
            await ada.aclose()


async def test_a_server_that_fails_at_start_is_named_with_its_exit_status_and_stderr(
    tmp_path: Path,
) -> None:
    """Issue 23: a stdio server that exits at start was reported as "ExceptionGroup:
    unhandled errors in a TaskGroup" after a long traceback."""
    failing = (
        "import sys; print('cannot open /srv/tools.db: no such file', file=sys.stderr); sys.exit(3)"
    )
    servers = {"db": {"command": sys.executable, "args": ["-c", failing]}}
    settings = make_settings(tmp_path / "data", mcp_servers=servers)
    with pytest.raises(ConfigurationError) as refused:
        async with running_services(settings):
            pass
    message = str(refused.value)
    assert message.startswith(
        "MCP server 'db' could not be reached to list its tools: "
        "the MCP server 'db' exited with status 3; its stderr ends:"
    ), message
    assert "cannot open /srv/tools.db: no such file" in message
    assert "ExceptionGroup" not in message and "TaskGroup" not in message
