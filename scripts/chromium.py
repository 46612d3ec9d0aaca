"""Launching Debian's Chromium headless (for Playwright): where it is and its flags."""

from __future__ import annotations

import shutil

# The closed network of CI machines refuses Chromium's background connections; these
# flags keep it from trying (and from waiting on them).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The Chromium executable; a clear error when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("Debian's chromium is not installed (apt-get install chromium)")
    return path
