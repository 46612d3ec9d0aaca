"""`atoll org` for operators: create, domains, plan, SSO required, members, removal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving import PASSWORD, serve_process

pytestmark = [pytest.mark.e2e]


def org(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atoll.cli", "org", *args, "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_an_operator_sets_up_an_organisation_that_requires_sso(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = org(data, "create", "Acme", "--plan", "pro")
    assert created.returncode == 0, created.stderr
    org_id = created.stdout.strip()
    assert org_id.startswith("org_")
    added = org(data, "add-domain", org_id, "ACME.test.")
    assert (added.returncode, added.stdout.strip()) == (0, "acme.test")
    other = org(data, "create", "Other").stdout.strip()
    taken = org(data, "add-domain", other, "acme.test")
    assert taken.returncode == 1 and "belongs to another organisation" in taken.stderr
    bad = org(data, "add-domain", org_id, "not a domain")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    plan = org(data, "set-plan", org_id, "enterprise")
    assert plan.stdout.strip() == "pro -> enterprise"
    assert org(data, "require-sso", org_id, "on").returncode == 0
    assert org(data, "members", org_id).stdout == ""
    missing = org(data, "remove", org_id, "nobody@acme.test")
    assert missing.returncode == 1 and "no such member" in missing.stderr
    unknown = org(data, "members", "org_nope")
    assert unknown.returncode == 1 and "organisation not found" in unknown.stderr
    with serve_process(data) as server:
        refused = httpx.post(
            f"{server.url}/api/v1/auth/register",
            json={"email": "bob@acme.test", "password": PASSWORD},
        )
        assert (refused.status_code, refused.json()["code"]) == (403, "sso_required")
        elsewhere = httpx.post(
            f"{server.url}/api/v1/auth/register",
            json={"email": "bob@evil-acme.test", "password": PASSWORD},
        )
        assert elsewhere.status_code == 201  # a look-alike domain is not the organisation's
