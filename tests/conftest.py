import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    from telly.backbones import load

    return load("tiny-random")


STARTED = time.time()


def pytest_terminal_summary(terminalreporter):
    """Name the page screenshots this run saved (tests/test_browser.py), for review."""
    root = Path(os.environ.get("TELLY_SCREENSHOTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    shots = [p for p in sorted(root.glob("*.png")) if p.stat().st_mtime >= STARTED] if root.is_dir() else []
    if shots:
        terminalreporter.section("page screenshots (full page, 1280 px wide)")
        for path in shots:
            terminalreporter.write_line(f"{path} ({path.stat().st_size / 1024:,.0f} KiB)")
