"""`atoll ssot migrate | rollback | checkpoints | audit-tests` on codebases built in a temp dir."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atoll.ssot.cli import main

pytestmark = [pytest.mark.ssot, pytest.mark.integration]

PYPROJECT = """
[tool.atoll.ssot]
paths = ["src"]

[tool.atoll.ssot.canonical]
"shop.core.state.OrderState" = "shop.core.state"

[tool.atoll.ssot.moved]
"shop.legacy.engine:Engine" = "shop.core.engine:OrderEngine"
"shop.old_helpers" = "shop.core.helpers"
"""

FILES = {
    "src/shop/__init__.py": "",
    "src/shop/core/__init__.py": "from shop.core.state import OrderState  # re-export\n",
    "src/shop/core/state.py": "class OrderState:\n    OPEN = 'open'\n",
    "src/shop/core/engine.py": "class OrderEngine:\n    pass\n",
    "src/shop/core/helpers.py": "def total(items):\n    return sum(items)\n",
    "src/shop/old_helpers.py": "def total(items):\n    return sum(items)\n",
    "src/shop/legacy/__init__.py": "",
    "src/shop/legacy/engine.py": "class Engine:\n    pass\n",
    "src/shop/orders.py": """
        # Orders: keep this comment.
        from shop.core import OrderState, engine as _unused_engine  # two names, one moves
        from shop.legacy.engine import Engine
        from . import old_helpers
        from .legacy import engine as legacy

        import shop.old_helpers as helpers


        def place(items):  # formatting is preserved
            first = Engine()
            second = legacy.Engine()
            return OrderState.OPEN, helpers.total(items), first, second, old_helpers, _unused_engine
        """,
    "src/shop/clean.py": "from shop.core.state import OrderState\n\nX = OrderState\n",
    "tests/test_orders.py": """
        from shop.orders import place

        def test_place():
            assert place([1, 2])[1] == 3
        """,
}


def build(root: Path) -> Path:
    (root / "pyproject.toml").write_text(PYPROJECT)
    for relative, source in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "src").rglob("*.py"))
    }


def test_dry_run_prints_diffs_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path)
    before = snapshot(root)
    assert main(["migrate", "--root", str(root), "--dry-run"]) == 0
    diff = capsys.readouterr().out
    assert "--- a/src/shop/orders.py" in diff
    assert "+from shop.core.state import OrderState" in diff
    assert snapshot(root) == before
    assert not (root / ".ssot-checkpoints").exists()


def test_migrate_then_rollback_restores_every_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path)
    before = snapshot(root)
    assert main(["scan", "--root", str(root), "--no-cache"]) == 1
    capsys.readouterr()
    assert main(["migrate", "--root", str(root)]) == 0
    output = capsys.readouterr().out
    assert "checkpoint" in output
    migrated = (root / "src/shop/orders.py").read_text()
    assert migrated == textwrap.dedent("""\
        # Orders: keep this comment.
        from shop.core import engine as _unused_engine  # two names, one moves
        from shop.core.state import OrderState
        from shop.core.engine import OrderEngine
        from shop.core import helpers
        from .legacy import engine as legacy

        import shop.core.helpers as helpers
        from shop.core.engine import OrderEngine


        def place(items):  # formatting is preserved
            first = OrderEngine()
            second = OrderEngine()
            return OrderState.OPEN, helpers.total(items), first, second, helpers, _unused_engine
        """)
    main(["scan", "--root", str(root), "--no-cache", "--format", "json"])
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert (counts["SSOT002"], counts["SSOT003"]) == (0, 0)  # nothing left that migrate fixes
    assert counts["SSOT001"] == 2  # the duplicated total() is for a person to resolve
    assert (root / "src/shop/clean.py").read_text() == FILES["src/shop/clean.py"]

    assert main(["checkpoints", "--root", str(root)]) == 0
    assert "1 file(s)  SSOT002,SSOT003" in capsys.readouterr().out
    assert main(["rollback", "--root", str(root), "--last"]) == 0
    assert "restored src/shop/orders.py" in capsys.readouterr().out
    assert snapshot(root) == before


def test_a_file_edited_after_migration_is_a_conflict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path)
    assert main(["migrate", "--root", str(root)]) == 0
    orders = root / "src/shop/orders.py"
    orders.write_text(orders.read_text() + "\n# edited by hand\n")
    capsys.readouterr()
    assert main(["rollback", "--root", str(root), "--last"]) == 1
    assert "conflict src/shop/orders.py" in capsys.readouterr().out
    assert orders.read_text().endswith("# edited by hand\n")
    checkpoint = json.loads(next((root / ".ssot-checkpoints").glob("*/manifest.json")).read_text())
    assert main(["rollback", "--root", str(root), checkpoint["id"], "--force"]) == 0
    assert orders.read_text() == textwrap.dedent(FILES["src/shop/orders.py"]).lstrip("\n")


def test_a_migration_that_would_import_a_missing_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path)
    (root / "src/shop/core/engine.py").write_text("class SomethingElse:\n    pass\n")
    original = (root / "src/shop/orders.py").read_bytes()
    assert main(["migrate", "--root", str(root)]) == 1
    errors = capsys.readouterr().err
    assert (
        "src/shop/orders.py: not rewritten — would import shop.core.engine.OrderEngine, "
        "which the scanned tree does not define" in errors
    )
    assert (root / "src/shop/orders.py").read_bytes() == original  # refused before writing


def test_a_migration_that_breaks_the_tests_is_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build(tmp_path)
    (root / "src/shop/core/helpers.py").write_text("def total(items):\n    return 0\n")
    original = (root / "src/shop/orders.py").read_bytes()
    command = f"{sys.executable} -m pytest -q -p no:cacheprovider tests"
    (root / "conftest.py").write_text("import sys\nsys.path.insert(0, 'src')\n")
    assert main(["migrate", "--root", str(root), "--validate", "tests",
                 "--test-cmd", command]) == 1  # fmt: skip
    assert "test command failed" in capsys.readouterr().out
    assert (root / "src/shop/orders.py").read_bytes() == original


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = build(tmp_path)
    assert main(["migrate", "--root", str(root), "--rule", "SSOT004"]) == 2
    assert main(["migrate", "--root", str(root), "--validate", "tests"]) == 2
    assert main(["rollback", "--root", str(root), "--last"]) == 2
    assert main(["rollback", "--root", str(root)]) == 2
    errors = capsys.readouterr().err
    assert "no checkpoints" in errors
    assert "Traceback" not in errors


def test_audit_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_ok.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    (tests / "test_syntax.py").write_text("def test_x(:\n    pass\n")
    (tests / "test_import.py").write_text(
        "import no_such_module_anywhere\n\ndef test_y():\n    pass\n"
    )
    (tests / "test_other.py").write_text("raise RuntimeError('boom at import')\n")
    (tests / "helpers.py").write_text("X = 1\n")
    assert main(["audit-tests", "--root", str(tmp_path), "--json", "tests"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["test_files"], report["collected_files"], report["tests_collected"]) == (4, 1, 2)
    failures = {f["file"]: (f["category"], f["first_error"]) for f in report["failures"]}
    assert failures["tests/test_syntax.py"][0] == "syntax_error"
    assert failures["tests/test_import.py"][0] == "missing_dependency"  # not the project's
    assert "no_such_module_anywhere" in failures["tests/test_import.py"][1]
    assert failures["tests/test_other.py"] == ("other", "RuntimeError: boom at import")
    (tests / "test_syntax.py").unlink()
    (tests / "test_import.py").unlink()
    (tests / "test_other.py").unlink()
    assert main(["audit-tests", "--root", str(tmp_path), "tests"]) == 0
    assert "1 test file(s); 1 collected; 2 test(s)" in capsys.readouterr().out


def test_the_dry_run_is_a_patch_git_applies_even_without_final_newlines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: a file without a trailing newline made the printed diff an invalid patch
    (``git apply --check`` failed). The patch must apply, and give what migrate writes."""
    (tmp_path / "dry").mkdir()
    root = build(tmp_path / "dry")
    orders = root / "src/shop/orders.py"
    # No newline at the end, and a form feed inside a line (git does not split there).
    orders.write_text(orders.read_text().rstrip("\n") + "  # \x0c kept")
    written = tmp_path / "real"
    shutil.copytree(root, written)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "before"], cwd=root, check=True)
    assert main(["migrate", "--root", str(root), "--dry-run"]) == 0
    diff = capsys.readouterr().out
    assert "\\ No newline at end of file" in diff
    (tmp_path / "migration.patch").write_text(diff)
    check = subprocess.run([*git, "apply", "--check", str(tmp_path / "migration.patch")], cwd=root)
    assert check.returncode == 0
    subprocess.run([*git, "apply", str(tmp_path / "migration.patch")], cwd=root, check=True)
    assert main(["migrate", "--root", str(written), "--validate", "syntax"]) == 0
    assert (written / "src/shop/orders.py").read_bytes() == orders.read_bytes()
