"""Headless Chromium for the tests that look at a page as a user would (the dashboard, MLflow's UI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

# Headless as root on a machine without a display, a GPU or a network.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Virtual time runs as fast as the page allows: the dashboard's script loads and fetches the study in it.
RENDER = ["--window-size=1280,900", "--virtual-time-budget=10000"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def program(name: str) -> str | None:
    """`name` beside this Python (its virtual environment's scripts), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else shutil.which(name)


def browse(chromium: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a new empty profile."""
    with tempfile.TemporaryDirectory(prefix="cnnsweep-chromium-") as profile:
        command = [*chromium, f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)


def chromium_command() -> tuple[list[str] | None, str]:
    """The command line that starts headless Chromium, or None and why none starts here."""
    binary = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
    if not binary:
        return None, "no Chromium here (looked for chromium on PATH and /usr/bin/chromium): apt-get install chromium"
    command = [binary, *CHROMIUM_FLAGS]
    try:
        probe = browse(command, "--dump-dom", "about:blank")
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"Chromium at {binary} could not be started: {error}"
    if "<html" not in probe.stdout:
        return None, f"Chromium at {binary} could not be started: {probe.stderr.strip()[-300:]}"
    return command, ""


class PageText(HTMLParser):
    """The text a page shows: its elements' text, without scripts and styles, in one spaced line."""

    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self.hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.words.extend(data.split())


def page_text(dom: str) -> str:
    parser = PageText()
    parser.feed(dom)
    return " ".join(parser.words)
