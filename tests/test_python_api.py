"""docs/python-api.md runs as written: every ```python block, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_the_python_api_page_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)  # the page uses the built-in procedural faces
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 5
    ns: dict = {}
    for k, code in enumerate(blocks):
        try:
            exec(compile(code, f"{PAGE.name} block {k}", "exec"), ns)
        except Exception as exc:  # name the block that broke
            pytest.fail(f"block {k} of {PAGE.name} failed: {exc!r}")
    out = capsys.readouterr().out
    assert "deleted adapter 1-forget-proc-1" in out
    # the bring-your-own-model part did what the page says
    assert ns["acc"](ns["model"], ns["test"]) > 0.8  # the undo brought the forgotten digit back
    assert ns["figures"].training_cost_J > 0 and ns["figures"].inference_energy_J > 0
    assert ns["deployment"].counts["sram_write_bits"] > 0 and ns["deployment"].counts["set_pulses"] == 0
    assert "forgotten: proc-2" in out
