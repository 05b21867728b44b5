"""Nothing lost, nothing silent: run folders under failure and interruption, inputs checked
where they enter, one ``error:`` line for every bad input, and the reproducibility record."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from rmlora import records
from rmlora.adapters import SramBuffer, adapters, add_adapter, load_adapter, save_adapter
from rmlora.cli import main
from rmlora.config import ChipConfig, ScenarioConfig
from rmlora.costs.profile import PROFILE_DIR, load_profile
from rmlora.device.params import PRESET_DIR, load_preset
from rmlora.errors import RmloraError
from rmlora.hardware import deploy, make_chip
from rmlora.runinfo import fingerprint
from rmlora.scenario import run_scenario
from rmlora.scenario.runner import _SeedRun, load_weights

ROOT = Path(__file__).resolve().parents[1]
#: tiny budgets and no retention section: these tests check the machinery, not the accuracy
TINY = {"pretrain": {"steps": 60}, "forget_lora": {"steps": 10}, "forget_full": {"steps": 10},
        "learn_lora": {"steps": 10}, "learn_full": {"steps": 10}, "augment_copies": 1, "retention_chips": 0}


def _toml(path: Path, top: str = "") -> Path:
    """A scenario TOML file: ``top`` lines, the quick configuration, one seed and :data:`TINY`."""
    def value(v):
        return "{" + ", ".join(f"{k} = {x}" for k, x in v.items()) + "}" if isinstance(v, dict) else str(v)
    path.write_text(f'{top}configuration = "quick"\nseeds = 1\nprogress = false\n[settings]\n'
                    + "".join(f"{k} = {value(v)}\n" for k, v in TINY.items()))
    return path


def _cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error(res, *fragments: str, code: int = 2) -> str:
    """The single ``error:`` line of a failed command (asserted), checked for ``fragments``."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _image_folder(root: Path, counts: dict[str, int]) -> Path:
    """A folder-per-identity photo set of random 20x20 greyscale PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    monkeypatch.delenv(records.KEY_ENV, raising=False)
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(tmp_path / "sk"))
    return tmp_path


def _edited(tmp_path: Path, source: Path, edit) -> Path:
    doc = json.loads(source.read_text())
    out = edit(doc)
    path = tmp_path / f"edited-{source.name}"
    path.write_text(json.dumps(doc if out is None else out))
    return path


# --------------------------------------------------------------------------- run folders
def test_a_folder_of_the_users_is_never_written_into(no_data):
    out = no_data / "x"
    out.mkdir()
    (out / "report.md").write_text("notes")
    one_error(_cli("demo", "--quick", "--out", out), "is not empty", "report.md")
    assert _digest(out) == {"report.md": hashlib.sha256(b"notes").hexdigest()}
    (out / "report.md").unlink()
    (out / records.LEDGER).write_text("[1,2]\n")  # a broken ledger is refused before any work, too
    one_error(_cli("demo", "--quick", "--out", out), "is not empty", records.LEDGER)


def test_a_failed_run_leaves_nothing_at_out_and_a_rerun_works(no_data, monkeypatch):
    out = no_data / "runs" / "deep" / "r"

    def nan_checkpoint(self):  # a failure in the middle of the run, after run.json was written
        raise RmloraError("pretrain: the loss became NaN")
    monkeypatch.setattr(_SeedRun, "run", nan_checkpoint)
    for attempt in range(2):  # the rerun is not refused with "already holds a run"
        one_error(_cli("demo", "--quick", "--no-progress", "--out", out), "the loss became NaN",
                  f"unfinished run is in {out}.failed")
        assert not out.exists() and not [p for p in out.parent.iterdir() if ".tmp-" in p.name]
        failed = Path(f"{out}.failed")
        assert "the loss became NaN" in (failed / "error.txt").read_text()
        assert json.loads((failed / "run.json").read_text())["status"] == "running"

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(_SeedRun, "run", interrupted)
    one_error(_cli("demo", "--quick", "--no-progress", "--out", out), "interrupted", code=130)
    assert "interrupted" in (Path(f"{out}.failed") / "error.txt").read_text() and not out.exists()


@pytest.mark.parametrize("why", ["one-photo identity", "NaN checkpoint", "clock_hz 0", "one class kept",
                                 "too few utterances"])
def test_bad_inputs_are_refused_before_anything_is_written(no_data, why):
    from rmlora.scenario.workload import get_workload

    out = no_data / "deep" / "r"
    if why == "one-photo identity":
        data = _image_folder(no_data / "faces", {"a": 1, "b": 6, "c": 6})
        res = _cli("demo", "--quick", "--data-dir", data, "--requests", "learn:b+c+a,forget:b", "--out", out)
        one_error(res, "'a'", "1 photo in")
    elif why == "NaN checkpoint":
        w = get_workload("face")
        sd = w.build_model(5, w.settings("quick")).state_dict()
        sd = {k: v.clone().fill_(math.nan) if v.is_floating_point() else v for k, v in sd.items()}
        save_file(sd, str(no_data / "nan.safetensors"))
        one_error(_cli("demo", "--quick", "--pretrained", no_data / "nan.safetensors", "--out", out), "NaN")
    elif why == "clock_hz 0":
        prof = _edited(no_data, PROFILE_DIR / "cmos-180nm.json", lambda d: d["constants"]["clock_hz"].update(value=0))
        one_error(_cli("demo", "--quick", "--profile", prof, "--out", out), "'clock_hz' must be > 0")
    elif why == "one class kept":  # one output class scores 100% by construction
        one_error(_cli("demo", "--quick", "--learn", "0,1", "--forget", "0", "--out", out),
                  "leaves 1 identity learned (proc-1)", "at least two")
    else:
        from scipy.io import wavfile

        data = no_data / "fsdd"
        data.mkdir()
        for spk in ("anna", "bob", "cy"):
            for take in range(2):
                wavfile.write(data / f"{take}_{spk}_{take}.wav", 8000, np.zeros(4000, np.int16) + take)
        one_error(_cli("demo", "--workload", "speaker", "--quick", "--data-dir", data, "--requests",
                       "learn:anna+bob+cy,forget:anna", "--out", out), "2 utterances")
    assert not (no_data / "deep").exists()


@pytest.mark.parametrize("cwd,where,message", [(".", "/proc/rmlora-x", "cannot create --out"),
                                               (".", "afile.txt/sub", "afile.txt is not a folder"),
                                               (".", "afile.txt", "exists and is not a folder"),
                                               ("empty", ".", "is the current folder"),
                                               ("empty", "..", "holds it")])
def test_an_unusable_out_is_one_error_line(no_data, monkeypatch, cwd, where, message):
    (no_data / "afile.txt").write_text("keep")
    (no_data / "empty").mkdir()
    monkeypatch.chdir(no_data / cwd)
    one_error(_cli("demo", "--quick", "--out", where), message)
    one_error(_cli("deploy", "--quick", "--out", where), message)
    assert (no_data / "afile.txt").read_text() == "keep" and (no_data / "empty").is_dir()


def test_sigint_exits_130_and_leaves_out_as_it_was(no_data):
    """A real SIGINT to a running ``rmlora demo``: exit 130, one error line, nothing at --out."""
    toml = _toml(no_data / "s.toml")
    out = no_data / "r"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SCIKIT_LEARN_DATA": str(no_data / "sk")}
    env.pop("RMLORA_DATA_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "rmlora.cli", "demo", "--config", str(toml), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(no_data.glob(".r.tmp-*/run.json")) and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: interrupted (the unfinished run is in {out}.failed)"], err
    assert not out.exists() and (Path(f"{out}.failed") / "error.txt").is_file()
    assert not list(no_data.glob(".r.tmp-*"))


# --------------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny face scenario on a photo folder made here, into an --out that exists and is empty."""
    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(records.KEY_ENV, raising=False)
        data = _image_folder(root / "faces", {"a": 6, "b": 6, "c": 6, "d": 6})
        prof = _edited(root, PROFILE_DIR / "cmos-180nm.json", lambda d: None)
        toml = _toml(root / "s.toml", 'workload = "face"\n')
        out = root / "run"
        out.mkdir()
        res = _cli("demo", "--config", toml, "--data-dir", data, "--requests", "learn:a+b+c,forget:b,add:d",
                   "--profile", prof, "--threads", "1", "--no-progress", "--out", out)
        assert res.exit_code == 0, res.output
    return root, out, data, prof, toml


def test_run_json_and_summary_record_how_the_run_was_made(tiny_run):
    root, out, data, prof, toml = tiny_run
    run = json.loads((out / "run.json").read_text())
    env = json.loads((out / "summary.json").read_text())["environment"]
    assert run["status"] == "finished"
    for rec in (run, env):
        assert {"numba", "scipy", "pillow", "torch", "numpy"} <= set(rec["versions"])
        assert rec["threads"] == 1 and rec["threads_requested"] == 1
        assert "demo" in rec["command"] and str(out) in rec["command"]
        assert rec["started"] <= rec["finished"] and rec["started"].endswith("Z")
        assert rec["git"] is None or len(rec["git"]["commit"]) == 40
        assert rec["inputs"]["data"]["files"] == 24 and rec["inputs"]["data"]["root"] == str(data)
        fp, manifest = fingerprint(data.rglob("*.png"))
        assert rec["inputs"]["data"]["sha256"] == fp["sha256"]
        assert rec["inputs"]["constants"][str(prof)] == hashlib.sha256(prof.read_bytes()).hexdigest()
        assert rec["inputs"]["constants"]["rmlora/device/presets/rram-180nm.json"] == hashlib.sha256(
            (PRESET_DIR / "rram-180nm.json").read_bytes()).hexdigest()
        assert rec["inputs"]["config"] == {str(toml): hashlib.sha256(toml.read_bytes()).hexdigest()}
    assert (out / "data_files.sha256").read_text() == manifest
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name or p.name.endswith(".failed")]


def test_the_run_folder_ledger_verifies_and_a_finished_run_is_refused(tiny_run):
    _, out, *_ = tiny_run
    res = _cli("ledger", "verify", out)
    assert res.exit_code == 0 and "verified: 1 entry" in res.output and "forgot b" in res.output, res.output
    before = _digest(out)
    one_error(_cli("demo", "--quick", "--out", out), "already holds a run")
    assert _digest(out) == before


# --------------------------------------------------------------------------- presets and profiles
@pytest.mark.parametrize("edit,message", [
    (lambda d: [1, 2], "top level must be a JSON object"),
    (lambda d: d["constants"]["max_pulses"].update(value=7.9), "'max_pulses' must be an integer, got 7.9"),
    (lambda d: d["constants"]["max_pulses"].update(value=True), "'max_pulses' must be a number"),
    (lambda d: d["constants"]["max_pulses"].update(value="30"), "'max_pulses' must be a number"),
    (lambda d: d["constants"]["mapping"].update(value=1), "'mapping' must be a string"),
    (lambda d: d["constants"]["drift_t0_s"].update(value=0), "'drift_t0_s' must be > 0"),
    (lambda d: d["constants"].update(tolerance_uSS=d["constants"].pop("tolerance_uS")),
     "unknown constant 'tolerance_uSS' (did you mean 'tolerance_uS'?)"),
    (lambda d: d.update(constans=d.pop("constants")), "unknown key 'constans' (did you mean 'constants'?)"),
    (lambda d: d["constants"].update(g_min_uS=20.0), "'g_min_uS' must be an object"),
    (lambda d: d["constants"]["g_min_uS"].update(sorce="x"), "unknown key 'sorce' (did you mean 'source'?)"),
])
def test_preset_files_are_checked_strictly(tmp_path, edit, message):
    path = _edited(tmp_path, PRESET_DIR / "rram-180nm.json", edit)
    with pytest.raises(RmloraError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        load_preset(str(path))
    one_error(_cli("deploy-check", "--preset", path), message)


@pytest.mark.parametrize("name", ["clock_hz", "pe_macs_per_cycle", "sram_bits_per_cycle", "parallel_tiles",
                                  "write_parallel_cells", "adcs_per_tile"])
def test_profile_divisors_must_be_positive(tmp_path, name):
    path = _edited(tmp_path, PROFILE_DIR / "cmos-180nm.json", lambda d: d["constants"][name].update(value=0))
    one_error(_cli("deploy-check", "--profile", path), f"'{name}' must be > 0")


def test_device_constants_replaced_in_code_are_checked_too():
    p = load_preset("rram-180nm")
    for changes, message in (({"max_pulses": 7.9}, "integer"), ({"drift_t0_s": 0.0}, "> 0"),
                             ({"tolerance_uSS": 1.0}, "did you mean 'tolerance_uS'")):
        with pytest.raises(RmloraError, match=message):
            p.replace(**changes)
    assert p.replace(max_pulses=20.0).max_pulses == 20  # an integral number is an integer


# --------------------------------------------------------------------------- CLI options
@pytest.mark.parametrize("args,message", [
    (["deploy-check", "--seed", str(2 ** 64)], "--seed"),
    (["deploy-check", "--seed", "-1"], "--seed"),
    (["deploy-check", "--adc-bits", "0"], "--adc-bits"),
    (["deploy-check", "--adc-bits", "-3"], "--adc-bits"),
    (["deploy-check", "--dac-bits", "64"], "--dac-bits"),
    (["deploy-check", "--tile", "1"], "--tile"),
    (["demo", "--seed", str(2 ** 64)], "--seed"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--dac-bits", "64"], "--dac-bits"),
    (["demo", "--seeds", "0"], "--seeds"),
    (["demo", "--threads", "0"], "--threads"),
    (["demo", "--add", ""], "--add is empty"),
    (["demo", "--learn", ","], "--learn is empty"),
    (["demo", "--nope"], "No such option"),
    (["nope"], "No such command"),
    (["age", "DEV", "--duration", "-5"], "not a duration"),
    (["age", "DEV", "--duration", "nan"], "not a duration"),
    (["ledger", "verify"], "Missing argument"),
])
def test_bad_options_are_one_error_line(no_data, args, message):
    out = no_data / "r"
    one_error(_cli(*args, *(["--out", out] if args[0] == "demo" else [])), message)
    assert not out.exists()


def test_a_data_dir_that_is_a_file_is_named_so(no_data):
    (no_data / "afile.txt").write_text("x")
    one_error(_cli("demo", "--quick", "--data-dir", no_data / "afile.txt", "--out", no_data / "r"),
              "is a file, not a folder")


def test_default_scenario_on_a_small_folder_blames_the_defaults_not_learn(no_data):
    data = _image_folder(no_data / "three", {"s1": 6, "s2": 6, "s3": 6})
    line = one_error(_cli("demo", "--quick", "--data-dir", data, "--out", no_data / "r"),
                     "the face workload's default learn classes", "name the classes with --learn")
    assert "--learn (" not in line
    one_error(_cli("demo", "--quick", "--data-dir", data, "--learn", "s1,s9", "--out", no_data / "r"),
              "--learn", "unknown identity 's9'")
    one_error(_cli("demo", "--quick", "--data-dir", data, "--learn", "s1,s2,s3", "--add", "s2", "--out", no_data / "r"),
              "add must name identities not learned yet")


# --------------------------------------------------------------------------- hardware and adapters
@pytest.mark.parametrize("seconds", [-5.0, math.nan, math.inf])
def test_ageing_needs_a_finite_non_negative_duration(seconds):
    chip = make_chip(ChipConfig(), 0)
    with pytest.raises(RmloraError, match="finite number of seconds >= 0"):
        chip.age(seconds)
    chip.age(0.0)  # a no-op


def test_sram_refuses_negative_sizes():
    with pytest.raises(RmloraError, match="integer >= 0"):
        SramBuffer(-1)
    sram = SramBuffer(100)
    for bits in (-5, 2.5, True):
        with pytest.raises(RmloraError, match="integer >= 0"):
            sram.allocate("a", bits)
    assert sram.blocks == {} and sram.free_bits == 100


@pytest.mark.parametrize("part", ["weight", "bias"])
def test_deploy_refuses_non_finite_weights_and_biases(part):
    m = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        getattr(m[0], part)[0] = math.nan
    with pytest.raises(RmloraError, match=f"{part}s? contains? NaN"):
        deploy(m, make_chip(ChipConfig(), 0))
    assert type(m[0]) is nn.Linear  # nothing was swapped


def test_load_weights_refuses_non_finite_values(tmp_path):
    m = nn.Linear(3, 2)
    save_file({"weight": torch.full((2, 3), math.inf), "bias": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(RmloraError, match="NaN or infinite"):
        load_weights(m, tmp_path / "w.safetensors")
    assert torch.isfinite(m.weight).all()


def _adapter_file(tmp_path: Path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    deploy(m, make_chip(ChipConfig(preset="ideal"), 0))
    add_adapter(m, "a", r=2)
    save_adapter(m, "a", tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        meta = f.metadata()
    return m, load_file(str(tmp_path / "a.safetensors")), meta


@pytest.mark.parametrize("defect,message", [
    ("alpha nan", "alpha must be a finite"), ("scale nan", "one finite scale > 0"),
    ("scale missing", "0.lora_A.scale is missing"), ("code 128", "beyond ±127"), ("code -128", "beyond ±127"),
    ("float codes", "integer codes"), ("extra tensor", "unexpected tensor"), ("rank 0", "rank must be >= 1"),
    ("no description", "no adapter description"), ("bits 99", "bits in 2..16")])
def test_a_bad_adapter_file_leaves_nothing_registered_or_allocated(tmp_path, defect, message):
    model, tensors, meta = _adapter_file(tmp_path)
    spec = json.loads(meta["rmlora_adapter"])
    k_codes = next(k for k in tensors if k.endswith(".codes"))
    k_scale = k_codes.replace(".codes", ".scale")
    if defect == "alpha nan":
        meta = {"rmlora_adapter": json.dumps({**spec, "alpha": math.nan})}
    elif defect == "scale nan":
        tensors[k_scale] = torch.tensor([math.nan])
    elif defect == "scale missing":
        del tensors[k_scale]
    elif defect.startswith("code"):  # int8 holds -128; 128 needs a wider type
        tensors[k_codes] = tensors[k_codes].to(torch.int16)
        tensors[k_codes][0, 0] = int(defect.split()[1])
    elif defect == "float codes":
        tensors[k_codes] = tensors[k_codes].float()
    elif defect == "extra tensor":
        tensors["other.codes"] = torch.zeros(1, dtype=torch.int8)
    elif defect == "no description":
        meta = {}
    else:
        meta = {"rmlora_adapter": json.dumps({**spec, **({"r": 0} if defect == "rank 0" else {"bits": 99})})}
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=meta)
    sram = SramBuffer(10 ** 6)
    before = dict(adapters(model))
    with pytest.raises(RmloraError, match=message):
        load_adapter(model, tmp_path / "b.safetensors", "b", sram)
    assert adapters(model) == before and sram.blocks == {}


def test_a_truncated_wav_is_an_error(tmp_path):
    from scipy.io import wavfile

    from rmlora.data.speech import _read_wav

    wavfile.write(tmp_path / "w.wav", 8000, (np.sin(np.arange(8000) / 5) * 3000).astype(np.int16))
    raw = (tmp_path / "w.wav").read_bytes()
    (tmp_path / "half.wav").write_bytes(raw[: len(raw) // 2])
    assert _read_wav(tmp_path / "w.wav")[0].shape == (8000,)
    with pytest.raises(RmloraError, match="truncated"):
        _read_wav(tmp_path / "half.wav")


def test_scenario_config_refuses_empty_class_lists():
    for name in ("learn", "forget", "add"):
        with pytest.raises(RmloraError, match=f"--{name} is empty"):
            ScenarioConfig(**{name: []})


def test_profiles_still_load():
    assert load_profile().clock_hz > 0 and load_preset("wan2022").max_pulses >= 1
