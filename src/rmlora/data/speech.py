"""Speaker-authentication speech data as binary spike trains of the SSC shape.

The paper (arXiv 2601.10037) feeds a recurrent LIF network with Spiking Speech
Commands (SSC) samples reduced to ``C = 140`` input channels and ``T = 10`` time
bins.  This module provides that shape from three sources:

* ``fsdd``: the Free Spoken Digit Dataset (mono 8 kHz wavs), turned into spikes by
  :class:`CochleaEncoder`;
* ``ssc``: the Spiking Heidelberg Datasets' SSC ``.h5`` files (700 units binned to
  140 channels);
* ``procedural``: a built-in synthetic multi-speaker set (source-filter vowels),
  encoded by the same :class:`CochleaEncoder`; needs no files.

Every set is a :class:`SpeechSet` with ``spikes`` of shape ``(N, T, C)`` (float32,
values in {0, 1}) and one speaker label per utterance.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from rmlora.data.base import LabelledSet, plural
from rmlora.errors import RmloraError
from rmlora.runinfo import note_input
from rmlora.threads import limit_threads

__all__ = [
    "SpeechSet",
    "CochleaEncoder",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "load_fsdd",
    "find_fsdd_recordings",
    "download_fsdd",
    "load_ssc",
    "make_procedural",
    "load_speech",
    "split_by_utterance",
    "FSDD_URL",
]

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
_FSDD_NAME = re.compile(r"^(\d+)_([A-Za-z0-9\-]+)_(\d+)\.wav$")


# --------------------------------------------------------------------------- set
@dataclass
class SpeechSet(LabelledSet):
    """Spike-encoded utterances with speaker labels.

    Attributes:
        spikes: float32 ``(N, T, C)`` binary spike trains (T time bins, C channels).
        labels: int64 ``(N,)`` speaker index into ``names``.
        utt_ids: int64 ``(N,)`` identifier unique per recording (stable across subsets).
        names: speaker names; ``names[label]`` is the speaker of a sample.
        source: where the data came from (folder, file or ``"procedural(seed=..)"``).
        kind: ``"fsdd"``, ``"ssc"`` or ``"procedural"``.
        words: int64 ``(N,)`` spoken word / digit index (-1 when unknown).
    """

    unit = "speaker"
    kinds = ("fsdd", "ssc", "procedural")
    spikes: torch.Tensor
    labels: torch.Tensor
    utt_ids: torch.Tensor
    names: list[str]
    source: str
    kind: str
    words: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self._check_layout(self.spikes, "(N, T, C) spikes", self.spikes.dim() == 3, ("labels", "utt_ids"))
        if self.words is None:
            self.words = torch.full((self.spikes.shape[0],), -1, dtype=torch.int64)

    @property
    def n_bins(self) -> int:
        """Number of time bins T."""
        return int(self.spikes.shape[1])

    @property
    def n_channels(self) -> int:
        """Number of input channels C."""
        return int(self.spikes.shape[2])



# --------------------------------------------------------------------- mel bank
def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 * log10(1 + f / 700)`` (f in Hz)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel` (result in Hz)."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, sr: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """Triangular HTK-mel filterbank, float32 ``(n_mels, n_fft // 2 + 1)``.

    Filter ``m`` rises linearly from the centre of filter ``m-1`` to its own centre
    and falls to the centre of filter ``m+1``; centres are equally spaced in mel
    between ``fmin`` and ``fmax`` (Hz).  Peak height is 1.  A filter narrower than
    the FFT bin spacing, which would catch no bin, gets weight 1 on the bin nearest
    its centre, so no filter is empty.
    """
    if n_fft < 2 or n_mels < 1:
        raise RmloraError(f"mel_filterbank needs n_fft >= 2 and n_mels >= 1, got {n_fft}, {n_mels}")
    if not 0.0 <= fmin < fmax <= sr / 2.0:
        raise RmloraError(f"mel_filterbank needs 0 <= fmin < fmax <= sr/2, got {fmin}, {fmax}, sr={sr}")
    freqs = np.linspace(0.0, sr / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / (mid - lo)
    down = (hi - freqs[None, :]) / (hi - mid)
    fb = np.clip(np.minimum(up, down), 0.0, None)
    empty = fb.max(axis=1) <= 0.0
    if empty.any():
        nearest = np.abs(freqs[None, :] - edges[1:-1][empty][:, None]).argmin(axis=1)
        fb[np.flatnonzero(empty), nearest] = 1.0
    return torch.from_numpy(fb.astype(np.float32))


# ---------------------------------------------------------------------- encoder
@dataclass
class CochleaEncoder:
    """Cochlea-like encoder: waveform -> binary spikes ``(n_bins, n_channels)``.

    Pipeline (all per utterance):

    1. mono, float, resample to ``sample_rate`` Hz (``scipy.signal.resample_poly``);
    2. pre-emphasis ``y[n] = x[n] - preemphasis * x[n-1]`` (flattens the ~-6 dB/octave
       speech tilt, like the outer/middle ear);
    3. STFT with a ``win_s`` (25 ms) Hann window and ``hop_s`` (10 ms) hop, FFT size
       ``n_fft`` (zero-padded; fine frequency grid so all 140 narrow low-frequency
       mel filters catch bins); power spectrum;
    4. ``n_channels`` triangular HTK-mel filters between ``fmin`` and ``fmax`` Hz
       (the basilar-membrane filterbank) and log compression (floor ``dynamic_range_db``
       below the loudest cell);
    5. speech-activity trimming: leading/trailing frames whose total energy is more
       than ``trim_db`` dB below the loudest frame are dropped;
    6. per-utterance normalisation: z-score of the log-mel values over the kept
       frames and all channels (keeps the spectral envelope, removes loudness);
    7. pooling of the kept frames into ``n_bins`` equal time bins (mean);
    8. spike encoding, ``mode="threshold"`` (default): channel ``c`` spikes in bin
       ``t`` when its pooled normalised log energy exceeds the utterance's
       ``spike_quantile`` quantile, i.e. a per-utterance adaptive threshold neuron
       that fires in the loudest ``1 - spike_quantile`` fraction of (bin, channel)
       cells.  ``mode="lif"``: per channel a leaky integrate-and-fire neuron
       (decay ``lif_beta`` per frame, threshold ``lif_threshold``, reset by
       subtraction) integrates the positive part of the normalised frame energy
       above the utterance's ``spike_quantile`` quantile; a bin carries a spike when
       the neuron fired at least once in that bin's frames.

    Call it as ``encoder(wave, sr)`` with ``wave`` a 1-D (or ``(n, channels)``)
    array of samples; returns float32 ``(n_bins, n_channels)`` with values in {0, 1}.
    """

    n_channels: int = 140
    n_bins: int = 10
    sample_rate: int = 8000
    win_s: float = 0.025
    hop_s: float = 0.010
    n_fft: int = 1024
    fmin: float = 50.0
    fmax: float | None = None
    preemphasis: float = 0.97
    dynamic_range_db: float = 80.0
    trim_db: float = 35.0
    mode: str = "threshold"
    spike_quantile: float = 0.5
    lif_beta: float = 0.8
    lif_threshold: float = 1.0
    _fb: torch.Tensor = field(init=False, repr=False)
    _window: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("threshold", "lif"):
            raise RmloraError(f"unknown encoder mode {self.mode!r}; use 'threshold' or 'lif'")
        if not 0.0 < self.spike_quantile < 1.0:
            raise RmloraError(f"spike_quantile must be in (0, 1), got {self.spike_quantile}")
        if self.n_bins < 1 or self.n_channels < 1:
            raise RmloraError("n_bins and n_channels must be positive")
        self.win_length = max(2, int(round(self.win_s * self.sample_rate)))
        self.hop_length = max(1, int(round(self.hop_s * self.sample_rate)))
        if self.n_fft < self.win_length:
            raise RmloraError(f"n_fft={self.n_fft} is shorter than the {self.win_length}-sample window")
        fmax = self.sample_rate / 2.0 if self.fmax is None else float(self.fmax)
        self._fb = mel_filterbank(self.n_fft, self.sample_rate, self.n_channels, self.fmin, fmax)
        self._window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32)

    # -- helpers
    def _prepare(self, wave: np.ndarray | torch.Tensor, sr: int) -> np.ndarray:
        x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
        if x.ndim == 2:  # (n, channels) as scipy.io.wavfile returns; also accept (channels, n)
            x = x.mean(axis=1 if x.shape[0] >= x.shape[1] else 0)
        if x.ndim != 1:
            raise RmloraError(f"waveform must be 1-D or (samples, channels), got shape {x.shape}")
        if np.issubdtype(x.dtype, np.integer):
            info = np.iinfo(x.dtype)
            x = (x.astype(np.float64) - (info.max + info.min + 1) / 2.0) / (info.max + 1.0)
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise RmloraError("waveform contains NaN or infinite samples")
        if int(sr) != self.sample_rate:
            from scipy.signal import resample_poly

            frac = Fraction(self.sample_rate, int(sr))
            x = resample_poly(x, frac.numerator, frac.denominator)
        if self.preemphasis:
            x = np.concatenate([x[:1], x[1:] - self.preemphasis * x[:-1]])
        if x.size < self.win_length:
            x = np.pad(x, (0, self.win_length - x.size))
        return x

    def log_mel(self, wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
        """Log mel energies (natural log) ``(frames, n_channels)`` of the whole waveform."""
        x = torch.from_numpy(self._prepare(wave, sr).astype(np.float32))
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self._window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (F, frames)
        mel = (self._fb @ power).T  # (frames, C)
        floor = mel.max().clamp_min(1e-20) * 10.0 ** (-self.dynamic_range_db / 10.0)
        return torch.log(mel + floor)

    def features(self, wave: np.ndarray | torch.Tensor, sr: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel frames of the active region ``(F, C)`` and their bin index ``(F,)``."""
        lm = self.log_mel(wave, sr)
        energy_db = 10.0 * torch.log10(torch.exp(lm).sum(dim=1))
        active = torch.nonzero(energy_db >= energy_db.max() - self.trim_db).flatten()
        lm = lm[int(active[0]) : int(active[-1]) + 1]
        z = (lm - lm.mean()) / lm.std(unbiased=False).clamp_min(1e-6)
        n = z.shape[0]
        if n < self.n_bins:  # very short: stretch frames so every bin gets one
            pos = torch.div(torch.arange(self.n_bins) * n, self.n_bins, rounding_mode="floor")
            z, n = z[pos], self.n_bins
        bins = torch.div(torch.arange(n) * self.n_bins, n, rounding_mode="floor")
        return z, bins

    def pooled(self, wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
        """Normalised log-mel energies pooled to ``(n_bins, n_channels)`` (before spiking)."""
        z, bins = self.features(wave, sr)
        return _bin_mean(z, bins, self.n_bins)

    def __call__(self, wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
        # the per-utterance tensors are tiny: intra-op threads on a busy machine make encoding ~30x slower
        with limit_threads(1):
            return self._encode(wave, sr)

    def _encode(self, wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
        z, bins = self.features(wave, sr)
        if self.mode == "threshold":
            pooled = _bin_mean(z, bins, self.n_bins)
            thr = torch.quantile(pooled.flatten(), self.spike_quantile)
            return (pooled > thr).to(torch.float32)  # constant input (silence): no spikes
        thr = torch.quantile(z.flatten(), self.spike_quantile)
        current = (z - thr).clamp_min(0.0)
        v = torch.zeros(z.shape[1])
        fired = torch.zeros(z.shape, dtype=torch.bool)
        for f in range(z.shape[0]):  # recurrence over frames, vectorised over channels
            v = self.lif_beta * v + current[f]
            fired[f] = v >= self.lif_threshold
            v = v - self.lif_threshold * fired[f].float()
        out = torch.zeros(self.n_bins, z.shape[1])
        out.index_add_(0, bins, fired.float())
        return (out > 0).to(torch.float32)


def _bin_mean(z: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    total = torch.zeros(n_bins, z.shape[1], dtype=z.dtype).index_add_(0, bins, z)
    count = torch.bincount(bins, minlength=n_bins).clamp_min(1).to(z.dtype)
    return total / count[:, None]


# ------------------------------------------------------------------------- FSDD
def _has_fsdd_wavs(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(_FSDD_NAME.match(p.name) for p in folder.glob("*.wav"))


def find_fsdd_recordings(root: str | os.PathLike) -> Path | None:
    """The FSDD wav folder for ``root`` (itself, ``root/recordings`` or ``root/fsdd/recordings``), or None."""
    base = Path(root).expanduser()
    for cand in (base, base / "recordings", base / "fsdd" / "recordings"):
        if _has_fsdd_wavs(cand):
            return cand
    return None


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples and rate of a wav file; one error line for an unreadable, empty or truncated
    file (fewer samples than its header announces: scipy only warns)."""
    import warnings

    from scipy.io import wavfile

    note_input(path, "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", wavfile.WavFileWarning)
        try:
            sr, x = wavfile.read(path)
        except Exception as exc:  # scipy raises ValueError / struct errors / EOFError
            raise RmloraError(f"cannot read wav file {path}: {exc}") from exc
    for w in caught:
        if "EOF" in str(w.message):
            raise RmloraError(f"wav file {path} is truncated: {w.message}")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if x.size == 0:
        raise RmloraError(f"wav file {path} holds no samples")
    return x, int(sr)


def load_fsdd(
    root: str | os.PathLike,
    encoder: CochleaEncoder | None = None,
    speakers: list[str] | None = None,
    max_per_speaker: int | None = None,
) -> SpeechSet:
    """Load and spike-encode the Free Spoken Digit Dataset.

    Args:
        root: the folder of ``<digit>_<speaker>_<take>.wav`` files, its parent holding
            ``recordings/``, or a folder holding ``fsdd/recordings``.
        encoder: waveform-to-spike encoder (default ``CochleaEncoder()``: 10 x 140).
        speakers: names to keep (default all); labels follow alphabetical order.
        max_per_speaker: keep at most this many files per speaker, taking takes
            0, 1, ... of every digit in turn (balanced over digits).

    Returns:
        A ``SpeechSet`` of kind ``"fsdd"``; ``words`` holds the digit, ``utt_ids`` the
        file's position in the folder's sorted listing.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise RmloraError(f"FSDD folder {base} does not exist")
    folder = find_fsdd_recordings(base)
    if folder is None:
        raise RmloraError(
            f"no FSDD wav files (<digit>_<speaker>_<take>.wav) in {base}, {base / 'recordings'} "
            f"or {base / 'fsdd' / 'recordings'}"
        )
    entries = []
    for i, p in enumerate(sorted(folder.glob("*.wav"), key=lambda q: q.name)):
        m = _FSDD_NAME.match(p.name)
        if m:
            entries.append((i, int(m.group(1)), m.group(2), int(m.group(3)), p))
    available = sorted({e[2] for e in entries})
    if speakers is None:
        names = available
    else:
        unknown = [s for s in speakers if s not in available]
        if unknown:
            raise RmloraError(
                f"unknown FSDD speaker(s) {', '.join(map(repr, unknown))} in {folder}; "
                f"available: {', '.join(available)}"
            )
        names = sorted(set(speakers))
    if not names:
        raise RmloraError(f"no speakers selected from {folder}")
    if max_per_speaker is not None and max_per_speaker < 1:
        raise RmloraError(f"max_per_speaker must be >= 1, got {max_per_speaker}")
    enc = encoder if encoder is not None else CochleaEncoder()
    chosen = []
    for s in names:
        files = sorted((e for e in entries if e[2] == s), key=lambda e: (e[3], e[1]))
        chosen.extend(files[:max_per_speaker] if max_per_speaker else files)
    spikes = torch.stack([enc(*_read_wav(e[4])) for e in chosen])
    label_of = {s: k for k, s in enumerate(names)}
    return SpeechSet(
        spikes=spikes,
        labels=torch.tensor([label_of[e[2]] for e in chosen], dtype=torch.int64),
        utt_ids=torch.tensor([e[0] for e in chosen], dtype=torch.int64),
        names=list(names),
        source=str(folder),
        kind="fsdd",
        words=torch.tensor([e[1] for e in chosen], dtype=torch.int64),
    )


def download_fsdd(dest: str | os.PathLike) -> Path:
    """Download the FSDD GitHub archive into ``dest`` and return its recordings folder.

    Nothing is fetched when ``dest`` already holds the recordings.  Network or
    archive failures raise :class:`RmloraError`.
    """
    dest = Path(dest).expanduser()
    found = find_fsdd_recordings(dest) or find_fsdd_recordings(dest / "free-spoken-digit-dataset-master")
    if found is not None:
        return found
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".zip", dir=dest)
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(FSDD_URL, timeout=60) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise RmloraError(f"could not download FSDD from {FSDD_URL}: {exc}") from exc
        try:
            with zipfile.ZipFile(tmp) as zf:
                members = [m for m in zf.namelist() if "/recordings/" in m]
                if not members:
                    raise RmloraError(f"the archive from {FSDD_URL} holds no recordings/ folder")
                zf.extractall(dest, members=members)
        except zipfile.BadZipFile as exc:
            raise RmloraError(f"the archive downloaded from {FSDD_URL} is not a valid zip: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    found = find_fsdd_recordings(dest / "free-spoken-digit-dataset-master")
    if found is None:
        raise RmloraError(f"no FSDD wav files found in {dest} after extracting the archive")
    return found


# -------------------------------------------------------------------------- SSC
def load_ssc(
    path_h5: str | os.PathLike,
    speakers: list[int] | None = None,
    n_bins: int = 10,
    n_channels: int = 140,
) -> SpeechSet:
    """Load a Spiking Heidelberg Datasets SSC ``.h5`` file as speaker-labelled spikes.

    The file holds ragged ``spikes/times`` (s) and ``spikes/units`` (0..699) per
    sample, ``labels`` (the command) and ``extra/speaker``.  Units are pooled
    into ``n_channels`` channels of ``700 // n_channels`` neighbouring units (5 for
    140) and times into ``n_bins`` equal bins over each sample's duration (its last
    spike time); a cell is 1 when any of its units fired in that bin.

    Args:
        speakers: SSC speaker ids to keep (default all); labels index the sorted ids.

    Returns:
        A ``SpeechSet`` of kind ``"ssc"`` with names ``"ssc-<speaker id>"``,
        ``words`` = the command label and ``utt_ids`` = the sample's row in the file.
    """
    path = Path(path_h5).expanduser()
    if not path.is_file():
        raise RmloraError(f"SSC file {path} does not exist")
    note_input(path, "data")
    try:
        import h5py
    except ImportError as exc:
        raise RmloraError(f"reading SSC file {path} needs h5py: pip install h5py") from exc
    n_units = 700
    per = max(1, n_units // n_channels)
    try:
        with h5py.File(path, "r") as f:
            times = f["spikes"]["times"][:]
            units = f["spikes"]["units"][:]
            words = np.asarray(f["labels"][:], dtype=np.int64)
            spk = np.asarray(f["extra"]["speaker"][:], dtype=np.int64)
    except (OSError, KeyError) as exc:
        raise RmloraError(f"cannot read SSC file {path} (need spikes/times, spikes/units, labels, extra/speaker): {exc}") from exc
    available = sorted(set(spk.tolist()))
    if speakers is None:
        ids = available
    else:
        unknown = [s for s in speakers if s not in available]
        if unknown:
            raise RmloraError(f"unknown SSC speaker id(s) {unknown} in {path}; {len(available)} available, e.g. {available[:10]}")
        ids = sorted(set(int(s) for s in speakers))
    label_of = {s: k for k, s in enumerate(ids)}
    rows = [i for i in range(len(spk)) if int(spk[i]) in label_of]
    if not rows:
        raise RmloraError(f"no samples selected from SSC file {path}")
    out = np.zeros((len(rows), n_bins, n_channels), dtype=np.float32)
    for k, i in enumerate(rows):
        t = np.asarray(times[i], dtype=np.float64)
        u = np.asarray(units[i], dtype=np.int64)
        if t.size == 0:
            continue
        dur = max(float(t.max()), 1e-9)
        b = np.clip((t / dur * n_bins).astype(np.int64), 0, n_bins - 1)
        c = np.clip(u // per, 0, n_channels - 1)
        out[k, b, c] = 1.0
    return SpeechSet(
        spikes=torch.from_numpy(out),
        labels=torch.tensor([label_of[int(spk[i])] for i in rows], dtype=torch.int64),
        utt_ids=torch.tensor(rows, dtype=torch.int64),
        names=[f"ssc-{s}" for s in ids],
        source=str(path),
        kind="ssc",
        words=torch.from_numpy(words[rows]),
    )


# ------------------------------------------------------------------- procedural
# (F1, F2, F3) in Hz of an average adult vocal tract (Peterson & Barney style).
_VOWELS = {
    "i": (270, 2290, 3010),
    "e": (530, 1840, 2480),
    "ae": (660, 1720, 2410),
    "a": (730, 1090, 2440),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
    "er": (490, 1350, 1690),
    "uh": (520, 1190, 2390),
}
# Ten "words" as vowel-target sequences (formant trajectories interpolate between them).
_WORDS = [
    ("i", "a"), ("u", "i"), ("a", "u", "e"), ("e", "o"), ("o", "i", "a"),
    ("ae", "u"), ("er", "a"), ("uh", "i", "o"), ("a", "er", "i"), ("u", "ae", "o"),
]
_BANDWIDTHS = (80.0, 110.0, 160.0)  # Hz, formant bandwidths


def _resonator(f: float, bw: float, sr: int) -> np.ndarray:
    """Denominator of a 2-pole resonator at ``f`` Hz with bandwidth ``bw`` Hz."""
    r = math.exp(-math.pi * bw / sr)
    return np.array([1.0, -2.0 * r * math.cos(2.0 * math.pi * f / sr), r * r])


def _synth(rng: np.random.Generator, spk: dict, word: int, sr: int) -> np.ndarray:
    """One utterance (float64 samples at ``sr`` Hz): glottal pulses -> formant filters."""
    from scipy.signal import lfilter

    dur = rng.uniform(0.5, 0.8) / spk["rate"]
    dur = float(np.clip(dur, 0.45, 0.9))
    n = int(dur * sr)
    t = np.arange(n) / sr
    # f0 contour: random start in the speaker's range, declination and a little vibrato
    f0 = rng.uniform(*spk["f0"]) * (1.0 - 0.15 * t / dur) * (1.0 + 0.02 * np.sin(2 * np.pi * 5.0 * t))
    phase = np.cumsum(f0 / sr)
    src = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    # spectral tilt of the glottal source: two one-pole low-passes
    src = lfilter([1.0 - spk["tilt"]], [1.0, -spk["tilt"]], src)
    src = lfilter([1.0 - spk["tilt"]], [1.0, -spk["tilt"]], src)
    src = src + spk["breath"] * rng.standard_normal(n) * src.std()
    # formant trajectory: piecewise-linear between the word's vowel targets
    targets = np.array([_VOWELS[v] for v in _WORDS[word]], dtype=np.float64)
    targets = targets * spk["scale"] * rng.uniform(0.97, 1.03, size=3)
    knots = np.linspace(0.0, 1.0, len(targets))
    block = int(0.01 * sr)
    y = np.zeros(n)
    zi = np.zeros(6)
    for start in range(0, n, block):
        pos = (start + block / 2) / n
        fr = [np.interp(pos, knots, targets[:, k]) for k in range(3)]
        a = np.array([1.0])
        for fk, bw in zip(fr, _BANDWIDTHS):
            a = np.convolve(a, _resonator(min(fk, 0.45 * sr), bw * spk["scale"], sr))
        seg, zi = lfilter([a.sum()], a, src[start : start + block], zi=zi)
        y[start : start + block] = seg
    env = np.minimum(1.0, np.minimum(t / 0.04, (dur - t) / 0.08)).clip(0.0, 1.0)
    y = y * env
    y = y / (np.abs(y).max() + 1e-12) * rng.uniform(0.3, 0.9)
    pad = [int(rng.uniform(0.05, 0.15) * sr) for _ in range(2)]
    y = np.concatenate([np.zeros(pad[0]), y, np.zeros(pad[1])])
    return y + 10.0 ** (-rng.uniform(45, 55) / 20.0) * rng.standard_normal(y.size)


def make_procedural(
    n_speakers: int = 8,
    utterances_per_speaker: int = 60,
    seed: int = 0,
    encoder: CochleaEncoder | None = None,
) -> SpeechSet:
    """Built-in synthetic multi-speaker set (8 kHz source-filter speech, spike-encoded).

    Each speaker has an f0 range (Hz), a vocal-tract scale multiplying all formants,
    a glottal spectral tilt, a breathiness level and a speaking rate.  Each utterance
    is one of 10 "words" (formant trajectories through 2-3 vowel targets) spoken
    0.5-0.8 s (divided by the rate) with random f0, small formant jitter, loudness and
    leading/trailing silence.  Deterministic for a given ``seed``.  Names ``"spk-0"``...
    """
    if n_speakers < 1 or utterances_per_speaker < 1:
        raise RmloraError("make_procedural needs n_speakers >= 1 and utterances_per_speaker >= 1")
    enc = encoder if encoder is not None else CochleaEncoder()
    sr = 8000
    rng = np.random.default_rng(seed)
    # spread speakers over the parameter space (stratified, then shuffled per axis)
    grid = (np.arange(n_speakers) + rng.uniform(0.2, 0.8, n_speakers)) / n_speakers
    f0_lo = 85.0 + 150.0 * rng.permutation(grid)
    scale = 0.82 + 0.36 * rng.permutation(grid)
    tilt = 0.55 + 0.35 * rng.permutation(grid)
    breath = 0.02 + 0.3 * rng.permutation(grid)
    rate = 0.85 + 0.35 * rng.permutation(grid)
    spikes, labels, words = [], [], []
    for s in range(n_speakers):
        spk = {
            "f0": (f0_lo[s], f0_lo[s] * 1.2),
            "scale": scale[s],
            "tilt": tilt[s],
            "breath": breath[s],
            "rate": rate[s],
        }
        for u in range(utterances_per_speaker):
            w = u % len(_WORDS)
            spikes.append(enc(_synth(rng, spk, w, sr), sr))
            labels.append(s)
            words.append(w)
    n = len(labels)
    return SpeechSet(
        spikes=torch.stack(spikes),
        labels=torch.tensor(labels, dtype=torch.int64),
        utt_ids=torch.arange(n, dtype=torch.int64),
        names=[f"spk-{s}" for s in range(n_speakers)],
        source=f"procedural(seed={seed})",
        kind="procedural",
        words=torch.tensor(words, dtype=torch.int64),
    )


# --------------------------------------------------------------------- resolver
def _find_h5(folder: Path) -> Path | None:
    files = sorted(folder.glob("*.h5")) + sorted(folder.glob("ssc/*.h5"))
    if not files:
        return None
    for key in ("ssc_train", "train", "ssc"):
        for p in files:
            if key in p.name.lower():
                return p
    return files[0]


def load_speech(
    data_dir: str | os.PathLike | None,
    seed: int = 0,
    download: bool = False,
    encoder: CochleaEncoder | None = None,
) -> SpeechSet:
    """Pick and load the speech set for the CLI.

    * ``data_dir`` given: it must exist and hold FSDD wavs (directly, in
      ``recordings/`` or in ``fsdd/recordings``) or be / contain an SSC ``.h5`` file
      (``*train*`` preferred); otherwise :class:`RmloraError`.
    * ``data_dir`` None: ``$RMLORA_DATA_DIR`` when it holds FSDD (``fsdd/recordings``);
      else, if ``download``, the FSDD archive fetched into ``$RMLORA_CACHE_DIR`` (default
      ``~/.cache/rmlora``); else the built-in :func:`make_procedural` set for ``seed``.
    """
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        if not base.exists():
            raise RmloraError(f"data directory {base} does not exist")
        if base.is_file():
            if base.suffix.lower() in (".h5", ".hdf5"):
                return load_ssc(base)
            raise RmloraError(f"{base} is a file but not an SSC .h5 file")
        if find_fsdd_recordings(base) is not None:
            return load_fsdd(base, encoder=encoder)
        h5 = _find_h5(base)
        if h5 is not None:
            return load_ssc(h5)
        raise RmloraError(
            f"no speech data in {base}: expected FSDD wavs (<digit>_<speaker>_<take>.wav) in it, "
            f"in recordings/ or in fsdd/recordings, or an SSC .h5 file"
        )
    env = os.environ.get("RMLORA_DATA_DIR")
    if env and find_fsdd_recordings(env) is not None:
        return load_fsdd(env, encoder=encoder)
    if download:
        cache = Path(os.environ.get("RMLORA_CACHE_DIR", "~/.cache/rmlora")).expanduser() / "fsdd"
        return load_fsdd(download_fsdd(cache), encoder=encoder)
    return make_procedural(seed=seed, encoder=encoder)


# ------------------------------------------------------------------------ split
def split_by_utterance(
    ds: SpeechSet,
    labels: list[int],
    n_val: int,
    n_test: int,
    seed: int = 0,
    max_train: int | None = None,
) -> dict[str, SpeechSet]:
    """Split the utterances of the given speakers into ``"train"``, ``"val"``, ``"test"``.

    Per speaker (label), its utterances are shuffled with ``seed`` (independently of
    the other speakers); the first ``n_test`` go to test, the next ``n_val`` to val and
    the rest (at most ``max_train``) to train.  Samples sharing a ``utt_id`` stay on
    one side.  Labels keep their original speaker indices.
    """
    if n_val < 0 or n_test < 0 or (max_train is not None and max_train < 0):
        raise RmloraError("n_val, n_test and max_train must be >= 0")
    if not labels:
        raise RmloraError(f"split_by_utterance needs at least one speaker; known: {', '.join(ds.names)}")
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    lab = ds.labels.numpy()
    uid = ds.utt_ids.numpy()
    for label in dict.fromkeys(int(ds.resolve(x)) for x in labels):
        rows = np.flatnonzero(lab == label)
        utts = np.unique(uid[rows])
        need = n_val + n_test + 1
        if utts.size < need:
            raise RmloraError(
                f"speaker {ds.names[label]!r} has {plural('utterance', utts.size)}; "
                f"need at least {need} (n_test={n_test} + n_val={n_val} + 1 for training)"
            )
        order = np.random.default_rng([seed, label]).permutation(utts)
        train_u = order[n_test + n_val :]
        if max_train is not None:
            train_u = train_u[:max_train]
        for name, chosen in (("test", order[:n_test]), ("val", order[n_test : n_test + n_val]), ("train", train_u)):
            parts[name].append(rows[np.isin(uid[rows], chosen)])
    out = {}
    for name, idx in parts.items():
        idx_all = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
        out[name] = ds.subset(idx_all)
    return out
