"""Fixtures shared by the test modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def edited_copy(tmp_path: Path) -> Callable[[Path, Callable[[dict], object]], Path]:
    """``edited_copy(source, edit)``: a copy of the constants file ``source`` (a device preset
    or a technology profile) in ``tmp_path`` after ``edit`` changed its ``constants`` dict."""
    def make(source: Path, edit: Callable[[dict], object]) -> Path:
        doc = json.loads(source.read_text())
        edit(doc["constants"])
        path = tmp_path / f"edited-{source.name}"
        path.write_text(json.dumps(doc))
        return path
    return make
