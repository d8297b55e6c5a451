"""Golden files are compared, never rewritten by a test run, unless a person asks for it.

`NLUFT_UPDATE_GOLDEN=1` (exactly; refused when `CI` is set) rewrites a golden file and skips the
test, so a rewrite can never count as a pass; review the diff and commit it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def check_golden(path: Path, text: str) -> None:
    """Assert that `text` equals the golden file; rewrite it only on explicit request."""
    if os.environ.get("NLUFT_UPDATE_GOLDEN") == "1":
        if os.environ.get("CI"):
            pytest.fail("NLUFT_UPDATE_GOLDEN=1 in CI: golden files are only compared there")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        pytest.skip(f"rewrote {path}; review the diff and commit it")
    assert text == path.read_text(), (
        f"differs from {path}; if the change is intended, rerun once with NLUFT_UPDATE_GOLDEN=1 "
        "and review the diff"
    )
