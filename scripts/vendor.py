"""The page's third-party libraries, vendored from the npm registry and checked.

    python scripts/vendor.py            # download the pinned packages, check, write the files
    python scripts/vendor.py --check    # offline: the vendored files are what the lock says

The lock (src/atoll/server/web/vendor/vendor.json) pins each package's version and
the registry's integrity hash of its tarball (``dist.integrity``, SHA-512); a
download whose hash differs is refused. Each file taken from a tarball is written
with its SHA-256 recorded, so ``--check`` proves the committed files are those.
Only ``//# sourceMappingURL`` lines are dropped (the maps are not shipped). The
page has no build step: the files are served as they are.

Packages marked ``"test": true`` (axe-core) are not shipped with the page: the
browser tests fetch them with ``fetch_test_package`` into a cache, checked the same way.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "src" / "atoll" / "server" / "web" / "vendor"
LOCK = VENDOR / "vendor.json"
REGISTRY = "https://registry.npmjs.org"


def tarball_url(name: str, version: str) -> str:
    """The registry URL of ``name@version``'s tarball."""
    return f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def download(package: dict[str, Any]) -> bytes:
    """The package's tarball, refused unless its SHA-512 is the pinned integrity."""
    url = tarball_url(package["name"], package["version"])
    with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 - the npm registry
        data: bytes = answer.read()
    algorithm, _, expected = package["integrity"].partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"{package['name']}: only sha512 integrity is accepted")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{package['name']}@{package['version']}: integrity mismatch")
    return data


def clean(data: bytes) -> bytes:
    """The file without source-map references (the maps are not shipped)."""
    lines = data.split(b"\n")
    return b"\n".join(line for line in lines if not line.startswith(b"//# sourceMappingURL="))


def extract(package: dict[str, Any], data: bytes, into: Path) -> dict[str, str]:
    """Write the package's chosen files into ``into``; their SHA-256 by file name."""
    written: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for source, target in package["files"].items():
            member = archive.extractfile(f"package/{source}")
            if member is None:
                raise SystemExit(f"{package['name']}: {source} is not a file")
            content = clean(member.read())
            (into / target).write_bytes(content)
            written[target] = hashlib.sha256(content).hexdigest()
    return written


def check(lock: dict[str, Any], into: Path, *, test: bool = False) -> list[str]:
    """What is wrong with the vendored files (empty: all match the lock)."""
    problems = []
    for package in lock["packages"]:
        if package.get("test", False) != test:
            continue
        for target in package["files"].values():
            digest = package["sha256"].get(target)
            path = into / target
            if digest is None:
                problems.append(f"{target}: not in the lock (run scripts/vendor.py)")
            elif not path.exists():
                problems.append(f"{target}: missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                problems.append(f"{target}: differs from {package['name']}@{package['version']}")
    return problems


def fetch_test_package(name: str, into: Path) -> Path:
    """Fetch (once) the test-only package ``name`` into ``into``; the directory."""
    lock = json.loads(LOCK.read_text())
    into.mkdir(parents=True, exist_ok=True)
    if check(lock, into, test=True):
        for package in lock["packages"]:
            wanted = package["name"] == name and package.get("test")
            if wanted and extract(package, download(package), into) != package["sha256"]:
                raise SystemExit(f"{name}: extracted files differ from the lock")
        if check(lock, into, test=True):
            raise SystemExit(f"{name}: not in the lock, or it does not match")
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the vendored files")
    options = parser.parse_args()
    lock = json.loads(LOCK.read_text())
    if options.check:
        problems = check(lock, VENDOR)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for package in lock["packages"]:
        with tempfile.TemporaryDirectory() as scratch:  # test-only packages are not shipped
            into = Path(scratch) if package.get("test") else VENDOR
            package["sha256"] = extract(package, download(package), into)
        print(f"{package['name']}@{package['version']}: {', '.join(package['files'].values())}")
    LOCK.write_text(json.dumps(lock, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
