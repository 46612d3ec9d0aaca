"""`atoll ssot` on legacy code nobody here wrote (issue 15): migrate never breaks code
silently, and a misconfiguration is an error, not "0 files"."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

import atoll.ssot.migrate as migrate_module
from atoll.ssot.cli import main

pytestmark = [pytest.mark.ssot, pytest.mark.integration]


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"))
    return root


LEGACY = {
    "pyproject.toml": """
        [tool.atoll.ssot]
        paths = ["app"]

        [tool.atoll.ssot.replaced]
        "app.old.state:OldState" = "app.context:NewContext"

        [tool.atoll.ssot.moved]
        "app.old.engine:Engine" = "app.engine:Engine"
        """,
    "app/__init__.py": "",
    "app/old/__init__.py": "",
    "app/old/state.py": "class OldState:\n    def __init__(self):\n        self.data = {}\n",
    "app/old/engine.py": "from app.engine import Engine  # kept for old imports\n",
    "app/engine.py": "class Engine:\n    pass\n",
    "app/context.py": "class NewContext:\n    def __init__(self, user_id, request_id):\n"
    "        self.user_id = user_id\n",
    "app/handlers.py": """
        import numpy_is_not_installed_here  # a third-party import the tool cannot see
        from app.old.state import OldState
        from app.old.engine import Engine


        def handle():
            return OldState(), Engine(), numpy_is_not_installed_here
        """,
}


def test_a_replaced_api_is_never_rewritten_and_a_moved_one_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path, LEGACY)
    assert main(["migrate", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    handlers = (root / "app/handlers.py").read_text()
    assert "from app.old.state import OldState" in handlers  # a different API: left alone
    assert "OldState()" in handlers and "NewContext" not in handlers
    assert "from app.engine import Engine" in handlers  # the same object, moved: rewritten
    assert "import numpy_is_not_installed_here" in handlers  # not a reason to restore
    assert (
        "app/handlers.py:2: from app.old.state import OldState — replaced by "
        "app.context:NewContext (a different API): port it by hand" in captured.err
    )
    assert "app/handlers.py: SSOT002: app.old.engine.Engine -> app.engine.Engine" in captured.out


def test_one_file_migrates_with_the_default_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(tmp_path, LEGACY)
    assert main(["migrate", "--root", str(root), "app/handlers.py"]) == 0
    assert "1 file(s) changed" in capsys.readouterr().err
    assert "from app.engine import Engine" in (root / "app/handlers.py").read_text()


def test_a_rewritten_re_export_that_others_import_is_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(
        tmp_path,
        {
            **LEGACY,
            "pyproject.toml": """
                [tool.atoll.ssot]
                paths = ["app"]

                [tool.atoll.ssot.moved]
                "app.old.engine:Engine" = "app.engine:RunEngine"
                """,
            "app/engine.py": "class RunEngine:\n    pass\n",
            "app/old/engine.py": "class Engine:\n    pass\n",
            "app/api.py": "from app.old.engine import Engine  # re-exported for clients\n",
            "app/client.py": "from app.api import Engine\n\nENGINE = Engine\n",
            "app/handlers.py": "",
        },
    )
    before = (root / "app/api.py").read_bytes()
    assert main(["migrate", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "app/api.py: restored — a name others import from it would be gone" in out
    assert "app/client.py:1 imports Engine from it" in out
    assert (root / "app/api.py").read_bytes() == before


def test_a_comment_after_the_last_name_of_a_parenthesised_import_survives(
    tmp_path: Path,
) -> None:
    root = write(
        tmp_path,
        {
            **LEGACY,
            "app/old/engine.py": "from app.engine import Engine\n\nHELPER = 1\n",
            "app/handlers.py": """
                from app.old.engine import (
                    Engine,  # the engine
                    HELPER,  # keep this comment
                )

                VALUE = (Engine, HELPER)
                """,
        },
    )
    assert main(["migrate", "--root", str(root)]) == 0
    handlers = (root / "app/handlers.py").read_text()
    assert "HELPER,  # keep this comment" in handlers
    assert "from app.engine import Engine" in handlers
    compile(handlers, "handlers.py", "exec")


def test_bom_and_latin_1_sources_are_read_and_written_in_their_encoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bom = b"\xef\xbb\xbffrom app.old.engine import Engine\n\nNAME = 'caf\xc3\xa9'\n"
    latin = b"# -*- coding: latin-1 -*-\nfrom app.old.engine import Engine\n\nNAME = 'caf\xe9'\n"
    root = write(
        tmp_path, {**LEGACY, "app/handlers.py": "", "app/bom.py": bom, "app/latin.py": latin}
    )
    assert main(["scan", "--root", str(root), "--no-cache", "--format", "json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["syntax_errors"] == []
    assert main(["migrate", "--root", str(root)]) == 0
    assert (root / "app/bom.py").read_bytes() == bom.replace(b"app.old.engine", b"app.engine")
    assert (root / "app/latin.py").read_bytes() == latin.replace(b"app.old.engine", b"app.engine")


def test_only_files_with_a_candidate_import_are_parsed_with_libcst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files: dict[str, str | bytes] = {f"app/plain_{i}.py": "import os\n" for i in range(30)}
    files["app/parent.py"] = "from app import old\nimport app.old\n"  # not the moved module
    root = write(tmp_path, {**LEGACY, **files})
    parsed: list[str] = []
    real = migrate_module.rewrite

    def counting(source: str, package: str, registry: migrate_module.Registry) -> object:
        parsed.append(source)
        return real(source, package, registry)

    monkeypatch.setattr(migrate_module, "rewrite", counting)
    assert main(["migrate", "--root", str(root), "--dry-run"]) == 0
    assert len(parsed) == 1  # handlers.py: the one file that imports a moved path
    assert "1 file(s) would change" in capsys.readouterr().err


def test_the_dry_run_applies_with_git(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write(tmp_path, LEGACY)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    assert main(["migrate", "--root", str(root), "--dry-run"]) == 0
    patch = capsys.readouterr().out
    (tmp_path / "change.patch").write_text(patch)
    applied = subprocess.run(
        ["git", "apply", "--check", "change.patch"], cwd=root, capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr


@pytest.mark.parametrize(
    ("pyproject", "args", "message"),
    [
        ("[tool.atoll.ssot]\ncanonnical = {}\n", [], "unknown key(s): canonnical"),
        ('[tool.atoll.ssot]\npaths = ["nowhere"]\n', [], "'nowhere' does not exist"),
        (
            '[tool.atoll.ssot]\npaths = ["app"]\n[tool.atoll.ssot.canonical]\n'
            '"app.gone.Thing" = "app.gone"\n',
            [],
            "module(s) not found in the scanned paths: app.gone",
        ),
        ("", ["app/missing.py"], "app/missing.py: no such file or directory"),
    ],
)
def test_a_misconfiguration_is_an_error_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    pyproject: str,
    args: list[str],
    message: str,
) -> None:
    root = write(tmp_path, {"app/__init__.py": "", "pyproject.toml": pyproject})
    assert main(["scan", "--root", str(root), "--no-cache", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_a_root_that_does_not_exist_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such" / "root"
    for command in (["scan"], ["migrate", "--dry-run"], ["checkpoints"]):
        assert main([*command, "--root", str(missing)]) == 2
        assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def audit(root: Path, *args: str) -> dict[str, object]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["audit-tests", "--root", str(root), "--json", *args])
    report: dict[str, object] = json.loads(out.getvalue())
    report["code"] = code
    return report


def failures_of(report: dict[str, object]) -> dict[str, tuple[str, str]]:
    found = report["failures"]
    assert isinstance(found, list)
    return {f["file"]: (f["category"], f["first_error"]) for f in found}


def test_audit_tests_tells_what_pytest_itself_refused(tmp_path: Path) -> None:
    write(tmp_path, {"tests/test_ok.py": "def test_a():\n    pass\n",
                     "pytest.ini": "[pytest]\naddopts = --no-such-option\n"})  # fmt: skip
    report = audit(tmp_path, "tests")
    assert report["code"] == 1 and report["exit_status"] == 4
    category, cause = failures_of(report)["<pytest>"]
    assert category == "pytest_error" and "no-such-option" in cause


def test_audit_tests_tells_a_project_import_from_a_missing_dependency(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "myproj/__init__.py": "",
            "tests/test_project.py": "from myproj.gone import thing\n",
            "tests/test_dependency.py": "import somepackage_not_installed\n",
        },
    )
    failures = failures_of(audit(tmp_path, "tests"))
    assert failures["tests/test_project.py"][0] == "import_error"
    assert failures["tests/test_dependency.py"][0] == "missing_dependency"
    assert "somepackage_not_installed" in failures["tests/test_dependency.py"][1]


def test_audit_tests_reports_a_test_module_that_exits_pytest(tmp_path: Path) -> None:
    write(tmp_path, {"tests/test_exit.py": "import sys\n\nsys.exit(3)\n",
                     "tests/test_ok.py": "def test_a():\n    pass\n"})  # fmt: skip
    report = audit(tmp_path, "tests")
    category, cause = failures_of(report)["<pytest>"]
    assert (category, report["code"]) == ("internal_error", 1)
    assert "SystemExit" in cause or "3" in cause


def test_audit_tests_uses_the_given_interpreter_and_a_timeout(tmp_path: Path) -> None:
    write(tmp_path, {"tests/test_slow.py": "import time\n\ntime.sleep(30)\n"})
    report = audit(tmp_path, "--timeout", "1", "tests")
    assert failures_of(report)["<pytest>"][0] == "timeout" and report["code"] == 1
    missing = audit(tmp_path, "--python", str(tmp_path / "no-python"), "tests")
    assert failures_of(missing)["<pytest>"][0] == "pytest_error"


def test_reports_levels_metrics_and_files_not_scanned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write(
        tmp_path,
        {
            "pyproject.toml": """
                [tool.atoll.ssot]
                paths = ["app"]

                [tool.atoll.ssot.canonical]
                "app.state.RunState" = "app.state"
                """,
            "app/__init__.py": "",
            "app/state.py": "class RunState:\n    pass\n",
            "app/api.py": "from app.state import RunState\n",
            "app/views.py": "from app import state\n\nCACHE = {}\n\n\ndef remember(k):\n"
            "    CACHE[k] = state.RunState()\n",
            "app/auth.py": "SKIP_AUTH = True\n",
            "app/broken.py": "def broken(:\n",
        },
    )
    assert main(["scan", "--root", str(root), "--no-cache", "--format", "sarif"]) == 1
    run = json.loads(capsys.readouterr().out)["runs"][0]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert all("relatedLocations" not in r for r in run["results"])  # none here
    assert levels == {"SSOT004": "warning", "SSOT006": "error"}
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for n in notes] == [
        "app/broken.py"
    ]
    assert main(["scan", "--root", str(root), "--no-cache"]) == 1
    text = capsys.readouterr().out
    assert "  app.state.RunState: 100.0% canonical (1 of 1 imports, 1 path(s))" in text
    assert "app/broken.py: not scanned" in text


def test_warnings_fail_the_scan_only_when_asked(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "pyproject.toml": '[tool.atoll.ssot]\npaths = ["app"]\n',
            "app/__init__.py": "",
            "app/cache.py": "CACHE = {}\n\n\ndef put(k, v):\n    CACHE[k] = v\n",
        },
    )
    assert main(["scan", "--root", str(root), "--no-cache"]) == 0  # SSOT004 is a warning
    assert main(["scan", "--root", str(root), "--no-cache", "--fail-on", "warning"]) == 1


def test_a_target_defined_by_assignment_or_re_export_is_accepted(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            **LEGACY,
            "app/_impl.py": "class _Engine:\n    pass\n",
            "app/engine.py": "from app._impl import _Engine\n\nEngine = _Engine\n",
        },
    )
    assert main(["migrate", "--root", str(root)]) == 0
    assert "from app.engine import Engine" in (root / "app/handlers.py").read_text()
