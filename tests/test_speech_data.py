"""Tests for rmlora.data.speech: mel filterbank, cochlea encoder, FSDD / SSC /
procedural loaders, resolver and utterance split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly

from rmlora.data.speech import (
    CochleaEncoder,
    SpeechSet,
    hz_to_mel,
    load_fsdd,
    load_speech,
    load_ssc,
    make_procedural,
    mel_filterbank,
    mel_to_hz,
    split_by_utterance,
)
from rmlora.errors import RmloraError

FSDD_NAMES = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


def _fsdd_dir() -> Path | None:
    base = Path(os.environ.get("RMLORA_DATA_DIR", "/work/shared/data")) / "fsdd" / "recordings"
    return base if base.is_dir() and any(base.glob("*.wav")) else None


def _vowel(sr: int, f0: float = 120.0, formants=(700.0, 1200.0, 2500.0), dur: float = 0.6, seed: int = 0):
    """A crude synthetic vowel with silence around it (float64 samples at sr Hz)."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    n = int(dur * sr)
    src = np.zeros(n)
    src[:: max(1, int(sr / f0))] = 1.0
    y = src
    for f in formants:
        r = np.exp(-np.pi * 100.0 / sr)
        y = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r], y)
    y = y / np.abs(y).max() * 0.5 * np.hanning(n)
    pad = np.zeros(int(0.1 * sr))
    y = np.concatenate([pad, y, pad])
    return y + 1e-3 * rng.standard_normal(y.size)


def _logreg_accuracy(ds: SpeechSet, n_train: int, n_test: int, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    sp = split_by_utterance(ds, list(range(len(ds.names))), n_val=0, n_test=n_test, seed=seed, max_train=n_train)
    assert len(sp["train"]) == n_train * len(ds.names)
    assert len(sp["test"]) == n_test * len(ds.names)
    with threadpool_limits(1):  # tiny problem: BLAS threads only add contention
        clf = LogisticRegression(max_iter=2000).fit(sp["train"].spikes.flatten(1).numpy(), sp["train"].labels.numpy())
    return float(clf.score(sp["test"].spikes.flatten(1).numpy(), sp["test"].labels.numpy()))


# ------------------------------------------------------------------ filterbank
def test_mel_roundtrip():
    f = np.array([0.0, 100.0, 1000.0, 4000.0])
    assert np.allclose(mel_to_hz(hz_to_mel(f)), f)
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.5)  # HTK: 1000 Hz ~ 1000 mel


@pytest.mark.parametrize("n_fft", [1024, 256, 64])
def test_mel_filterbank_shape_and_triangles(n_fft):
    sr, fmin, fmax = 8000, 50.0, 4000.0
    fb = mel_filterbank(n_fft, sr, 140, fmin, fmax)
    assert fb.shape == (140, n_fft // 2 + 1) and fb.dtype == torch.float32
    fb = fb.numpy()
    assert (fb >= 0).all()
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    peaks = []
    for row in fb:
        support = np.flatnonzero(row > 0)
        assert support.size > 0, "empty filter"
        assert np.all(np.diff(support) == 1), "support must be contiguous"
        vals = row[support]
        k = int(vals.argmax())
        assert np.all(np.diff(vals[: k + 1]) > 0) and np.all(np.diff(vals[k:]) < 0), "must peak exactly once"
        assert 0 < vals[k] <= 1.0 + 1e-6
        peaks.append(freqs[support[k]])
        assert freqs[support[0]] >= fmin - sr / n_fft and freqs[support[-1]] <= fmax
    assert np.all(np.diff(peaks) >= 0), "centres ascend"
    if n_fft == 1024:  # fine grid: filters span fmin..fmax
        assert freqs[np.flatnonzero(fb[0])[0]] < fmin + 20
        assert freqs[np.flatnonzero(fb[-1])[-1]] > fmax - 100
        # every bin between the first and last filter centre is covered
        lo, hi = np.flatnonzero(fb[0])[0], np.flatnonzero(fb[-1])[-1]
        assert (fb[:, lo:hi].sum(axis=0) > 0).all()


def test_mel_filterbank_bad_args():
    with pytest.raises(RmloraError):
        mel_filterbank(256, 8000, 40, 100.0, 5000.0)


# --------------------------------------------------------------------- encoder
@pytest.mark.parametrize("mode", ["threshold", "lif"])
def test_encoder_shape_binary_deterministic(mode):
    enc = CochleaEncoder(mode=mode)
    wave = _vowel(8000)
    s1 = enc(wave, 8000)
    s2 = enc(torch.from_numpy(wave.copy()), 8000)
    assert s1.shape == (10, 140) and s1.dtype == torch.float32
    assert set(torch.unique(s1).tolist()) == {0.0, 1.0}
    assert 0 < s1.sum() < s1.numel()
    assert torch.equal(s1, s2)


def test_encoder_int16_stereo_and_resampling():
    enc = CochleaEncoder()
    w8 = _vowel(8000, seed=1)
    ref = enc(w8, 8000)
    pcm = (np.stack([w8, w8], axis=1) * 32767).astype(np.int16)
    assert (enc(pcm, 8000) == ref).float().mean() > 0.97
    w16 = resample_poly(w8, 2, 1)
    assert (enc(w16, 16000) == ref).float().mean() > 0.9


def test_encoder_separates_different_spectra():
    enc = CochleaEncoder()
    a = enc(_vowel(8000, formants=(300.0, 2300.0, 3000.0)), 8000)
    b = enc(_vowel(8000, formants=(750.0, 1100.0, 2400.0)), 8000)
    a2 = enc(_vowel(8000, formants=(300.0, 2300.0, 3000.0), seed=5), 8000)
    assert (a != b).float().mean() > (a != a2).float().mean() + 0.05


def test_encoder_silence_and_params():
    enc = CochleaEncoder(n_channels=40, n_bins=5)
    out = enc(_vowel(8000), 8000)
    assert out.shape == (5, 40)
    assert enc(np.zeros(50), 8000).sum() == 0
    with pytest.raises(RmloraError):
        CochleaEncoder(mode="rate")
    with pytest.raises(RmloraError):
        enc(np.ones((2, 2, 2)), 8000)


# ---------------------------------------------------------------- fake FSDD
@pytest.fixture()
def fake_fsdd(tmp_path: Path) -> Path:
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for spk, f0 in (("zed", 100.0), ("amy", 210.0)):
        for digit in range(2):
            for take in range(3):
                w = _vowel(8000, f0=f0, seed=take + 10 * digit)
                wavfile.write(rec / f"{digit}_{spk}_{take}.wav", 8000, (w * 30000).astype(np.int16))
    return tmp_path


def test_load_fsdd_root_variants(fake_fsdd: Path):
    rec = fake_fsdd / "fsdd" / "recordings"
    sets = [load_fsdd(p) for p in (fake_fsdd, fake_fsdd / "fsdd", rec)]
    for ds in sets:
        assert ds.names == ["amy", "zed"] and ds.kind == "fsdd"
        assert ds.spikes.shape == (12, 10, 140)
        assert ds.labels.tolist() == [0] * 6 + [1] * 6
        assert len(set(ds.utt_ids.tolist())) == 12
        assert torch.equal(ds.spikes, sets[0].spikes)
    one = load_fsdd(rec, speakers=["zed"], max_per_speaker=4)
    assert one.names == ["zed"] and len(one) == 4 and sorted(one.words.tolist()) == [0, 0, 1, 1]


def test_load_fsdd_errors(fake_fsdd: Path, tmp_path: Path):
    with pytest.raises(RmloraError, match="does not exist"):
        load_fsdd(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RmloraError, match="no FSDD wav"):
        load_fsdd(empty)
    with pytest.raises(RmloraError, match="bob.*available: amy, zed"):
        load_fsdd(fake_fsdd, speakers=["bob"])
    bad = fake_fsdd / "fsdd" / "recordings" / "0_amy_9.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(RmloraError, match="0_amy_9.wav"):
        load_fsdd(fake_fsdd)


def test_load_speech_resolution(fake_fsdd: Path, tmp_path: Path, monkeypatch):
    with pytest.raises(RmloraError, match="does not exist"):
        load_speech(str(tmp_path / "missing"))
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(RmloraError, match="no speech data"):
        load_speech(str(empty))
    assert load_speech(str(fake_fsdd)).names == ["amy", "zed"]
    monkeypatch.setenv("RMLORA_DATA_DIR", str(fake_fsdd))
    assert load_speech(None).kind == "fsdd"
    monkeypatch.setenv("RMLORA_DATA_DIR", str(empty))
    ds = load_speech(None, seed=3)
    assert ds.kind == "procedural" and ds.source == "procedural(seed=3)"


# ------------------------------------------------------------------- SpeechSet
def _toy_set(n_spk: int = 3, per: int = 10) -> SpeechSet:
    n = n_spk * per
    return SpeechSet(
        spikes=torch.zeros(n, 10, 140),
        labels=torch.arange(n_spk).repeat_interleave(per),
        utt_ids=torch.arange(100, 100 + n),
        names=[f"s{i}" for i in range(n_spk)],
        source="toy",
        kind="procedural",
    )


def test_resolve_and_subset():
    ds = _toy_set()
    assert ds.resolve("s2") == 2 and ds.resolve(1) == 1 and ds.resolve("0") == 0
    with pytest.raises(RmloraError, match="s0, s1, s2"):
        ds.resolve("carol")
    with pytest.raises(RmloraError):
        ds.resolve(7)
    sub = ds.subset([0, 29])
    assert sub.labels.tolist() == [0, 2] and sub.utt_ids.tolist() == [100, 129] and sub.names == ds.names


def test_split_by_utterance_disjoint_and_sizes():
    ds = _toy_set()
    sp = split_by_utterance(ds, [0, "s2"], n_val=2, n_test=3, seed=1, max_train=4)
    sizes = {k: len(v) for k, v in sp.items()}
    assert sizes == {"train": 8, "val": 4, "test": 6}
    ids = {k: set(v.utt_ids.tolist()) for k, v in sp.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert set(torch.cat([v.labels for v in sp.values()]).tolist()) == {0, 2}
    again = split_by_utterance(ds, [0, 2], n_val=2, n_test=3, seed=1, max_train=4)
    assert all(torch.equal(again[k].utt_ids, sp[k].utt_ids) for k in sp)
    other = split_by_utterance(ds, [0, 2], n_val=2, n_test=3, seed=2, max_train=4)
    assert not torch.equal(other["test"].utt_ids, sp["test"].utt_ids)
    with pytest.raises(RmloraError, match="s1"):
        split_by_utterance(ds, [1], n_val=5, n_test=5)


# ----------------------------------------------------------------- procedural
def test_procedural_deterministic():
    a = make_procedural(n_speakers=3, utterances_per_speaker=5, seed=7)
    b = make_procedural(n_speakers=3, utterances_per_speaker=5, seed=7)
    c = make_procedural(n_speakers=3, utterances_per_speaker=5, seed=8)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.spikes, c.spikes)
    assert a.names == ["spk-0", "spk-1", "spk-2"] and a.spikes.shape == (15, 10, 140)
    assert set(torch.unique(a.spikes).tolist()) == {0.0, 1.0}


def test_procedural_speakers_separable():
    ds = make_procedural(n_speakers=8, utterances_per_speaker=60, seed=0)
    acc = _logreg_accuracy(ds, n_train=40, n_test=20)
    assert acc >= 0.80, acc


# ------------------------------------------------------------------------ SSC
def test_load_ssc_tiny_file(tmp_path: Path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "ssc_tiny.h5"
    vl_f = h5py.vlen_dtype(np.dtype("float32"))
    vl_u = h5py.vlen_dtype(np.dtype("uint16"))
    times = [np.array([0.0, 0.5, 1.0], "f4"), np.array([0.1, 0.2], "f4"), np.array([0.3], "f4")]
    units = [np.array([0, 7, 699], "u2"), np.array([5, 9], "u2"), np.array([100], "u2")]
    with h5py.File(path, "w") as f:
        f.create_dataset("spikes/times", data=np.array(times, dtype=object), dtype=vl_f)
        f.create_dataset("spikes/units", data=np.array(units, dtype=object), dtype=vl_u)
        f.create_dataset("labels", data=np.array([3, 4, 5]))
        f.create_dataset("extra/speaker", data=np.array([42, 7, 42]))
    ds = load_ssc(path)
    assert ds.kind == "ssc" and ds.names == ["ssc-7", "ssc-42"]
    assert ds.labels.tolist() == [1, 0, 1] and ds.spikes.shape == (3, 10, 140)
    assert ds.spikes[0, 0, 0] == 1 and ds.spikes[0, 5, 1] == 1 and ds.spikes[0, 9, 139] == 1
    assert ds.spikes[0].sum() == 3
    assert ds.spikes[1, 5, 1] == 1 and ds.spikes[1, 9, 1] == 1  # units 5 and 9 -> channel 1
    only = load_ssc(path, speakers=[7])
    assert len(only) == 1 and only.utt_ids.tolist() == [1]
    with pytest.raises(RmloraError):
        load_ssc(path, speakers=[99])


def test_load_ssc_errors(tmp_path: Path):
    with pytest.raises(RmloraError, match="does not exist"):
        load_ssc(tmp_path / "missing.h5")
    try:
        import h5py  # noqa: F401
    except ImportError:
        f = tmp_path / "x.h5"
        f.write_bytes(b"")
        with pytest.raises(RmloraError, match="pip install h5py"):
            load_ssc(f)


# ----------------------------------------------------------------- real FSDD
@pytest.fixture(scope="module")
def fsdd60() -> SpeechSet:
    root = _fsdd_dir()
    if root is None:
        pytest.skip("FSDD recordings not available offline")
    return load_fsdd(root.parent.parent, max_per_speaker=60)


def test_fsdd_real_loads(fsdd60: SpeechSet):
    ds = fsdd60
    assert ds.names == FSDD_NAMES and ds.kind == "fsdd"
    assert ds.spikes.shape == (360, 10, 140) and ds.spikes.dtype == torch.float32
    assert torch.bincount(ds.labels).tolist() == [60] * 6
    assert ds.labels.dtype == torch.int64 and ds.utt_ids.dtype == torch.int64
    assert len(set(ds.utt_ids.tolist())) == 360
    assert torch.bincount(ds.words).tolist() == [36] * 10  # balanced digits
    assert set(torch.unique(ds.spikes).tolist()) == {0.0, 1.0}
    per_sample = ds.spikes.flatten(1).mean(1)
    assert (per_sample > 0).all() and (per_sample < 1).all()
    assert ds.resolve("theo") == 4 and ds.resolve(5) == 5


def test_fsdd_real_split_and_speaker_separability(fsdd60: SpeechSet):
    sp = split_by_utterance(fsdd60, list(range(6)), n_val=5, n_test=20, seed=0)
    ids = [set(v.utt_ids.tolist()) for v in sp.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 360
    acc = _logreg_accuracy(fsdd60, n_train=40, n_test=20)
    assert acc >= 0.85, acc
