"""Golden Path load against a scaled-out deployment and the single process, in one run.

Starts throwaway PostgreSQL and redis-server on loopback, then measures three
set-ups with the same client load (N users x M messages over WebSockets, the
offline model, each user waiting for each run's terminal event):

- ``single_sqlite``: one ``atoll serve`` on its embedded defaults (SQLite);
- ``single_postgres``: one ``atoll serve`` on PostgreSQL;
- ``scaled_out``: ``--nodes`` ``atoll serve`` API nodes (users alternate between
  them) and ``--workers`` ``atoll worker`` processes, on PostgreSQL + Redis.

Every process is ours and stopped by pid at the end. Prints JSON (runs/s,
p50/p99 latency from send to the terminal event, failures).

    python bench/scale_out.py --users 50 --messages 10 [--nodes 2] [--workers 2] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from golden_path import drive, process, register_users
from report import ONE_ADDRESS, write_section

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from ports import free_port
from postgres import create_database, postgres_server
from redis_server import redis_server


def atoll(command: str, data: Path, env: dict[str, str], port: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "atoll.cli", command, "--data-dir", str(data)]
    return argv + (["--port", str(port)] if port is not None else [])


@contextlib.contextmanager
def workers(count: int, root: Path, env: dict[str, str]) -> Iterator[None]:
    procs = []
    try:
        for index in range(count):
            data = root / f"worker-{index}"
            data.mkdir()
            log = open(root / f"worker-{index}.log", "wb")  # noqa: SIM115 - the child keeps it
            procs.append(subprocess.Popen(atoll("worker", data, env), env=env,
                                          stdout=log, stderr=log))  # fmt: skip
        deadline = time.monotonic() + 60
        while any(" ready (" not in (root / f"worker-{i}.log").read_text() for i in range(count)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker did not start")
            time.sleep(0.1)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(nodes: list[tuple[list[str], dict[str, str], int]], users: int, messages: int,
            agent: str) -> dict[str, Any]:  # fmt: skip
    with contextlib.ExitStack() as stack:
        urls = []
        for command, env, port in nodes:
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(process(command, env, url, "/readyz"))
            urls.append(url)
        tokens = asyncio.run(register_users(urls[0], users))
        ws = [u.replace("http", "ws", 1) + "/api/v1/ws" for u in urls]
        return asyncio.run(drive(ws, tokens, messages, agent))


def run(
    users: int, messages: int, agent: str, node_count: int, worker_count: int
) -> dict[str, Any]:
    base = {
        **os.environ,
        "ATOLL_MESSAGES_PER_MINUTE": "1000000",
        "ATOLL_SIGNUPS_PER_HOUR": "1000000",
        **ONE_ADDRESS,
    }
    results: dict[str, Any] = {"users": users, "messages_per_user": messages, "agent": agent}
    with tempfile.TemporaryDirectory(prefix="atoll-bench-") as tmp:
        root = Path(tmp)
        (root / "single").mkdir()
        port = free_port()
        env = {**base, "ATOLL_DATA_DIR": str(root / "single")}
        single = [(atoll("serve", root / "single", env, port), env, port)]
        results["single_sqlite"] = measure(single, users, messages, agent)
        with postgres_server() as postgres, redis_server() as redis:
            pg_env = {**base, "ATOLL_DATABASE_URL": create_database(postgres),
                      "ATOLL_SECRET_KEY": secrets.token_urlsafe(48)}  # fmt: skip
            (root / "single-pg").mkdir()
            port = free_port()
            node = [(atoll("serve", root / "single-pg", pg_env, port), pg_env, port)]
            results["single_postgres"] = measure(node, users, messages, agent)

            cluster_env = {**base, "ATOLL_DATABASE_URL": create_database(postgres),
                           "ATOLL_REDIS_URL": redis.url,
                           "ATOLL_SECRET_KEY": secrets.token_urlsafe(48)}  # fmt: skip
            ports = [free_port() for _ in range(node_count)]
            nodes = []
            for index, node_port in enumerate(ports):
                (root / f"node-{index}").mkdir()
                command = atoll("serve", root / f"node-{index}", cluster_env, node_port)
                nodes.append((command, cluster_env, node_port))
            # Node A migrates the database before anything else touches it.
            with process(*nodes[0][:2], f"http://127.0.0.1:{ports[0]}", "/readyz"):
                pass
            with workers(worker_count, root, cluster_env):
                scaled = measure(nodes, users, messages, agent)
            scaled["api_nodes"], scaled["workers"] = node_count, worker_count
            results["scaled_out"] = scaled
    results["cores"] = len(os.sched_getaffinity(0))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--agent", default="assistant", choices=["assistant", "supervisor"])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    output = run(args.users, args.messages, args.agent, args.nodes, args.workers)
    print(json.dumps(output, indent=2))
    if args.write:
        command = "python " + " ".join(["bench/scale_out.py", *sys.argv[1:]])
        section = "scale-out" if (args.nodes, args.workers) == (2, 2) else "scale-out-small"
        write_section(section, command, output)


if __name__ == "__main__":
    main()
