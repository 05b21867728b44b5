"""The ``rmlora deploy-check`` command through click's test runner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rmlora.cli import main
from rmlora.device.params import PRESET_DIR

KEYS = {"cells", "mean_pulses_per_cell", "failed_cells", "programming_energy_J", "programming_time_s",
        "relative_output_error", "preset"}


def invoke(*args: str):
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2 keeps stderr apart
    return runner.invoke(main, list(args))


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rram_check() -> dict:
    result = invoke("deploy-check", "--json")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_deploy_check_json_is_one_object_with_the_report(rram_check):
    assert isinstance(rram_check, dict)
    assert KEYS <= set(rram_check)
    assert rram_check["preset"] == "rram-180nm"
    # the built-in MLP 64-128-64-10: 64·128 + 128·64 + 64·10 weights, one cell each (offset mapping)
    assert rram_check["cells"] == 64 * 128 + 128 * 64 + 64 * 10
    assert 3 <= rram_check["mean_pulses_per_cell"] <= 30
    assert 0 <= rram_check["failed_cells"] < 0.01 * rram_check["cells"]
    assert rram_check["programming_energy_J"] > 0 and rram_check["programming_time_s"] > 0
    assert 0 < rram_check["relative_output_error"] < 0.5


def test_deploy_check_is_reproducible(rram_check):
    again = json.loads(invoke("deploy-check", "--json").stdout)
    assert again == rram_check


def test_deploy_check_ideal_preset_is_exact():
    result = invoke("deploy-check", "--json", "--preset", "ideal")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["preset"] == "ideal"
    assert out["relative_output_error"] < 1e-5
    assert out["failed_cells"] == 0 and out["mean_pulses_per_cell"] == 0


def test_unknown_preset_is_one_error_line_and_exit_2():
    result = invoke("deploy-check", "--json", "--preset", "no-such-preset")
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "no-such-preset" in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout.strip() == ""


def test_preset_file_with_a_negative_constant_is_refused(tmp_path):
    doc = json.loads((PRESET_DIR / "rram-180nm.json").read_text())
    doc["constants"]["tolerance_uS"]["value"] = -1.0
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    result = invoke("deploy-check", "--json", "--preset", str(path))
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "tolerance_uS" in lines[0]
    assert result.stdout.strip() == ""


def test_human_readable_report():
    result = invoke("deploy-check", "--preset", "ideal")
    assert result.exit_code == 0, result.output
    assert "relative output error" in result.stdout
    assert "failed cells" in result.stdout
