"""The example plugin (examples/wordsmith), installed as a package the way an operator
would (pip, its entry point found without ATOLL_PLUGINS), runs its own tests with
``atoll.testing``, and answers through a live ``atoll serve`` and the OpenAI client."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from serving import PASSWORD, ServeProcess, serve_process

pytestmark = [pytest.mark.e2e]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wordsmith"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, pip-installed into a directory of its own (not the test venv, where
    its entry point would add an agent to every other test's server)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(EXAMPLE)],
        check=True, timeout=300,
    )  # fmt: skip
    assert (target / "atoll_wordsmith").is_dir()
    return target


@pytest.fixture(scope="module")
def live(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data = tmp_path_factory.mktemp("wordsmith") / "data"
    env = {"PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")])}
    with serve_process(data, **env) as server:
        yield server


def test_the_examples_own_tests_pass_with_the_test_helper(installed: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 passed" in result.stdout


def test_the_installed_plugin_answers_through_a_live_server(live: ServeProcess) -> None:
    registered = httpx.post(
        f"{live.url}/api/v1/auth/register", json={"email": "ws@example.com", "password": PASSWORD}
    ).json()
    headers = {"Authorization": f"Bearer {registered['access_token']}"}
    agents = httpx.get(f"{live.url}/api/v1/agents", headers=headers).json()
    assert "wordsmith" in [a["name"] for a in agents]  # found by its entry point
    tools = [t["name"] for t in httpx.get(f"{live.url}/api/v1/tools", headers=headers).json()]
    assert "text_stats" in tools and "house_style" not in tools  # editors only
    key = httpx.post(f"{live.url}/api/v1/keys", headers=headers, json={"name": "ws"}).json()
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=key["key"], max_retries=0)
    completion = client.chat.completions.create(
        model="wordsmith", messages=[{"role": "user", "content": "Short words win. Every time."}]
    )
    answer = completion.choices[0].message.content or ""
    assert answer.startswith("5 words in 2 sentence(s); the longest word is “Short”.")
    kinds = [(e["type"], e["data"].get("tool")) for e in completion.model_extra["atoll"]["events"]]
    assert ("tool_completed", "text_stats") in kinds
    assert "Traceback" not in live.log_text()
