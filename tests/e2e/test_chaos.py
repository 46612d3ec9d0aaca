"""The chaos suite: many users, several runs in flight each, sockets dropped at random.

Every run a client assembled must equal the server's log (seq 1..N, nothing twice,
nothing missing), every event must follow its run's ack on its socket, and no run
may be left pending or running once the load drains (see scripts/chaos_client.py).
Bounded for CI; ``bench/chaos.py`` runs the long version.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from atoll.client import AtollClient
from atoll.server.serve import running_server

from chaos_client import ChaosUser, Counters, verify
from serving import PASSWORD, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.multi_user, pytest.mark.chaos]


@pytest.mark.parametrize("seed", [1, 2])
async def test_exactly_once_for_every_run_through_random_disconnects(
    tmp_path: Path, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path / "data", messages_per_minute=100_000, offline_token_delay=0.004
    )
    async with running_server(settings) as (url, _):
        users = []
        for n in range(12):
            async with AtollClient(url) as client:
                await client.register(f"chaos{n}@example.com", PASSWORD)
                assert client.access_token is not None
                rng = random.Random(seed * 100 + n)
                users.append(
                    ChaosUser(url, client.access_token, messages=10, inflight=5, drop=0.2, rng=rng)
                )
        totals = Counters()
        for counters in await asyncio.gather(*(user.run() for user in users)):
            totals.add(counters)
        assert totals.disconnects >= 30, totals  # the chaos really happened
        assert (totals.duplicated, totals.gaps, totals.early) == (0, 0, 0), totals
        assert totals.errors == {}, totals.errors
        for user in users:
            verdict = await verify(url, user)
            assert verdict.runs == 10, verdict  # one run per message, resends included
            assert (verdict.lost, verdict.stuck, verdict.mismatched) == (0, 0, 0), verdict
            assert verdict.extra_runs == 0, verdict
    errors = [r for r in caplog.records if r.name.startswith("atoll") and r.levelno >= 40]
    assert not errors, [r.getMessage() for r in errors]  # e.g. a run started twice
