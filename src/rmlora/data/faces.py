"""Face datasets for the face-recognition unlearning / continual-learning demo.

The paper's task uses the Olivetti faces (40 people x 10 photos) resized to
16x16 greyscale: identities 0-4 are learned, one is forgotten, one is added.
This module gives that task from several sources, all as a :class:`FaceSet`:

* :func:`load_att` - the AT&T "Database of Faces" folder (``s<k>/<n>.pgm``),
  the original of scikit-learn's Olivetti set;
* :func:`load_olivetti` - scikit-learn's cached Olivetti faces;
* :func:`load_image_folder` - any folder-per-identity photo collection;
* :func:`make_procedural` - a deterministic built-in synthetic face set;
* :func:`load_faces` - picks one of the above (used by the CLI), never
  downloading unless asked.

:func:`split_by_photo` makes per-identity train/val/test splits with no photo
on two sides, and :func:`augment` / :func:`augment_set` make
training-only augmented copies.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rmlora.data.base import LabelledSet, data_folder, natural_key, plural
from rmlora.data.images import check_size, is_image_file, read_square
from rmlora.errors import RmloraError
from rmlora.runinfo import note_input

__all__ = [
    "FaceSet",
    "IMAGE_EXTENSIONS",
    "load_att",
    "load_olivetti",
    "load_image_folder",
    "make_procedural",
    "load_faces",
    "split_by_photo",
    "augment",
    "augment_set",
]

#: File suffixes :func:`load_image_folder` reads (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".tif", ".tiff")


# ---------------------------------------------------------------------------
# FaceSet
# ---------------------------------------------------------------------------


@dataclass
class FaceSet(LabelledSet):
    """A labelled set of square greyscale face photos.

    Attributes:
        images: float32 tensor ``(N, 1, S, S)`` with values in ``[0, 1]``.
        labels: int64 tensor ``(N,)``, identity index ``0..K-1`` (``K = len(names)``).
        photo_ids: int64 tensor ``(N,)``, one id per original photo (augmented
            copies repeat the id of the photo they came from).
        names: identity names, ``names[label]`` (e.g. ``"s1"``, ``"olivetti-0"``).
        source: human-readable description of where the photos came from.
        kind: one of ``"att"``, ``"olivetti"``, ``"folder"``, ``"procedural"``.
    """

    unit = "identity"
    kinds = ("att", "olivetti", "folder", "procedural")
    images: torch.Tensor
    labels: torch.Tensor
    photo_ids: torch.Tensor
    names: list[str]
    source: str
    kind: str

    def __post_init__(self) -> None:
        self._check_layout(self.images, "(N, 1, S, S) images",
                           self.images.dim() == 4 and self.images.shape[1] == 1, ("labels", "photo_ids"))

    @property
    def n_identities(self) -> int:
        """Number of identities ``K`` (``len(names)``), present in this set or not."""
        return len(self.names)

    @property
    def size(self) -> int:
        """Side ``S`` of the square photos in pixels."""
        return int(self.images.shape[-1])



# ---------------------------------------------------------------------------
# Photo files
# ---------------------------------------------------------------------------


def _read_photo(path: Path, size: int) -> np.ndarray:
    """Read one photo: greyscale, central square crop, resized; float32 (size, size) in [0, 1]."""
    return _resize_square(read_square(path, colour=False), size)


def _resize_square(img, size: int) -> np.ndarray:
    """Resize a square PIL image (mode L or F) to (size, size), antialiased; float32 in [0, 1]."""
    from PIL import Image

    scale = 255.0 if img.mode == "L" else 1.0
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / np.float32(scale)
    return np.clip(arr, 0.0, 1.0)


def _build_set(
    photos: list[np.ndarray], labels: list[int], names: list[str], source: str, kind: str
) -> FaceSet:
    images = torch.from_numpy(np.stack(photos).astype(np.float32)).unsqueeze(1)
    return FaceSet(
        images=images.contiguous(),
        labels=torch.tensor(labels, dtype=torch.int64),
        photo_ids=torch.arange(len(photos), dtype=torch.int64),
        names=names,
        source=source,
        kind=kind,
    )


def _att_identity_dirs(root: Path) -> list[tuple[int, Path]]:
    out = []
    for d in root.iterdir():
        m = re.fullmatch(r"s(\d+)", d.name)
        if m and d.is_dir():
            out.append((int(m.group(1)), d))
    return sorted(out)


def _looks_like_att(root: Path) -> bool:
    return (root / "s1").is_dir() and (root / "s1" / "1.pgm").is_file()


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------


def load_att(root: str | os.PathLike, size: int = 16) -> FaceSet:
    """Load the AT&T (ORL) faces from ``root/s<k>/<n>.pgm``.

    ``root`` may also be a folder holding ``att_faces/``. Identity ``s<k>`` gets
    label ``k-1`` in numeric order of ``k`` (``s1`` -> 0, ``s2`` -> 1, ``s10`` -> 9);
    photos of one identity are in natural file-name order. Each 92x112 photo
    is cropped to its central square and resized to ``size`` x ``size``.

    Returns a FaceSet with images ``(N, 1, size, size)`` float32 in ``[0, 1]``
    (``N = 400`` for the full database), names ``"s1"``, ``"s2"``, ...
    """
    size = check_size(size, 2)
    root = data_folder(root, "AT&T faces folder")
    if not _att_identity_dirs(root) and (root / "att_faces").is_dir():
        root = root / "att_faces"
    idents = _att_identity_dirs(root)
    if not idents:
        raise RmloraError(f"no AT&T identity folders (s1, s2, ...) in {root}")
    photos: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    for label, (k, d) in enumerate(idents):
        files = sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".pgm"),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise RmloraError(f"AT&T identity folder {d} holds no .pgm photos")
        names.append(f"s{k}")
        for f in files:
            photos.append(_read_photo(f, size))
            labels.append(label)
    source = f"AT&T faces at {root} ({len(names)} identities, {len(photos)} photos)"
    return _build_set(photos, labels, names, source, "att")


def _sklearn_data_home(data_home: str | os.PathLike | None) -> Path:
    if data_home is None:
        data_home = os.environ.get("SCIKIT_LEARN_DATA", os.path.join("~", "scikit_learn_data"))
    return Path(data_home).expanduser()


class _OlivettiNotCached(RmloraError):
    """Olivetti faces are not in the scikit-learn cache and download was not allowed."""


def load_olivetti(
    size: int = 16, data_home: str | os.PathLike | None = None, download: bool = False
) -> FaceSet:
    """Load scikit-learn's Olivetti faces (40 identities x 10 photos, 64x64), resized.

    Uses ``sklearn.datasets.fetch_olivetti_faces``; downloads only when
    ``download=True``, otherwise raises :class:`RmloraError` if not cached.
    Returns images ``(400, 1, size, size)`` float32 in ``[0, 1]``, names
    ``"olivetti-0"`` .. ``"olivetti-39"``.
    """
    size = check_size(size, 2)
    home = _sklearn_data_home(data_home)
    if not download and not home.is_dir():
        # Checked here so that looking does not create the cache folder.
        raise _OlivettiNotCached(
            f"Olivetti faces are not in the scikit-learn cache {home}; pass download=True "
            f"(--download) to fetch them, or give a data folder"
        )
    try:
        from sklearn.datasets import fetch_olivetti_faces
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise RmloraError(f"scikit-learn is needed for the Olivetti faces: {exc}") from exc
    try:
        bunch = fetch_olivetti_faces(data_home=str(home), download_if_missing=download)
    except OSError as exc:
        if not download:
            raise _OlivettiNotCached(
                f"Olivetti faces are not in the scikit-learn cache {home}; pass download=True "
                f"(--download) to fetch them, or give a data folder"
            ) from exc
        raise RmloraError(f"could not download the Olivetti faces into {home}: {exc}") from exc
    except Exception as exc:  # corrupt cache, network errors wrapped differently, ...
        raise RmloraError(f"could not load the Olivetti faces from {home}: {exc}") from exc
    from PIL import Image

    for cached in home.glob("olivetti*"):
        note_input(cached, "data")
    raw = np.asarray(bunch.images, dtype=np.float32)
    target = np.asarray(bunch.target, dtype=np.int64)
    photos = [_resize_square(Image.fromarray(np.ascontiguousarray(im), mode="F"), size) for im in raw]
    k = int(target.max()) + 1
    names = [f"olivetti-{i}" for i in range(k)]
    source = f"scikit-learn Olivetti faces in {home} ({k} identities, {len(photos)} photos)"
    return _build_set(photos, target.tolist(), names, source, "olivetti")


def _image_identity_dirs(root: Path) -> list[tuple[Path, list[Path]]]:
    out = []
    for d in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                    key=lambda d: natural_key(d.name)):
        files = sorted((p for p in d.iterdir() if is_image_file(p, IMAGE_EXTENSIONS)),
                       key=lambda p: natural_key(p.name))
        if files:
            out.append((d, files))
    return out


def load_image_folder(root: str | os.PathLike, size: int = 16) -> FaceSet:
    """Load a folder-per-identity photo set: ``root/<identity>/<photo>.<ext>``.

    Reads png/jpg/jpeg/bmp/pgm/tif files with PIL as greyscale, crops each to
    its central square and resizes to ``size`` x ``size``. Identities are the
    sub-folders holding at least one image, in natural name order (``s2`` <
    ``s10``); the folder name is the identity name. Returns images
    ``(N, 1, size, size)`` float32 in ``[0, 1]``.
    """
    size = check_size(size, 2)
    root = data_folder(root, "image folder")
    idents = _image_identity_dirs(root)
    if not idents:
        raise RmloraError(
            f"no identity sub-folders with images ({', '.join(IMAGE_EXTENSIONS)}) in {root}"
        )
    photos: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    for label, (d, files) in enumerate(idents):
        names.append(d.name)
        for f in files:
            photos.append(_read_photo(f, size))
            labels.append(label)
    source = f"image folder {root} ({len(names)} identities, {len(photos)} photos)"
    return _build_set(photos, labels, names, source, "folder")


# ---------------------------------------------------------------------------
# Procedural faces
# ---------------------------------------------------------------------------


def _soft_ellipse(u, v, cx, cy, a, b, px):
    """Antialiased ellipse mask (1 inside) with centre (cx, cy), semi-axes (a, b)."""
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return np.clip((1.0 - r) * np.minimum(a, b) / px + 0.5, 0.0, 1.0)


def _soft_box(d, half, px):
    """Antialiased |d| < half mask."""
    return np.clip((half - np.abs(d)) / px + 0.5, 0.0, 1.0)


def _mix(img, value, mask):
    return img * (1.0 - mask) + value * mask


def _identity_params(rng: np.random.Generator) -> dict:
    """Per-identity face geometry and tones (normalised units: canvas spans [-1, 1])."""
    p = {
        "face_w": rng.uniform(0.48, 0.68),
        "face_h": rng.uniform(0.64, 0.86),
        "eye_sep": rng.uniform(0.17, 0.31),
        "eye_y": rng.uniform(-0.24, -0.04),
        "eye_r": rng.uniform(0.06, 0.11),
        "brow_gap": rng.uniform(0.07, 0.15),
        "brow_len": rng.uniform(0.08, 0.15),
        "brow_tilt": rng.uniform(-0.35, 0.35),
        "nose_len": rng.uniform(0.12, 0.30),
        "nose_w": rng.uniform(0.035, 0.08),
        "mouth_w": rng.uniform(0.12, 0.28),
        "mouth_h": rng.uniform(0.022, 0.055),
        "mouth_gap": rng.uniform(0.07, 0.18),
        "hair_line": rng.uniform(-0.66, -0.32),
        "hair_curve": rng.uniform(0.0, 0.3),
        "skin": rng.uniform(0.56, 0.78),
        "hair": rng.uniform(0.06, 0.42),
        "glasses": bool(rng.uniform() < 0.3),
    }
    nose_top = p["eye_y"] + 0.04
    p["nose_top"] = nose_top
    p["mouth_y"] = min(nose_top + p["nose_len"] + p["mouth_gap"], 0.66 * p["face_h"])
    return p


def _draw_identity(p: dict, n: int, rng: np.random.Generator, canvas: int) -> np.ndarray:
    """Draw ``n`` photos of one identity at ``canvas`` x ``canvas``; float64 (n, canvas, canvas)."""
    px = 2.0 / canvas
    c = (np.arange(canvas) + 0.5) * px - 1.0
    X = c[None, None, :]
    Y = c[None, :, None]

    def col(a):  # (n,) -> (n, 1, 1) for broadcasting over the canvas
        return np.asarray(a, dtype=np.float64)[:, None, None]

    # Per-photo pose: shift of up to 2 px at 64x64, rotation, small scale change.
    dx = col(rng.uniform(-2, 2, n) / 32.0)
    dy = col(rng.uniform(-2, 2, n) / 32.0 + 0.05)
    rot = col(np.deg2rad(rng.uniform(-7, 7, n)))
    scale = col(rng.uniform(0.95, 1.05, n))
    cr, sr = np.cos(rot), np.sin(rot)
    u = (cr * (X - dx) + sr * (Y - dy)) / scale
    v = (-sr * (X - dx) + cr * (Y - dy)) / scale
    # Expression.
    smile = col(rng.uniform(-0.07, 0.10, n))
    open_eye = col(rng.uniform(0.35, 1.0, n))
    open_mouth = col(rng.uniform(0.0, 1.0, n) ** 2 * 0.035)
    # Scene: background, exposure and a directional lighting gradient.
    bg = col(rng.uniform(0.12, 0.34, n))
    exposure = col(rng.uniform(0.89, 1.11, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(0.0, 0.22, n)
    gx, gy = col(amp * np.cos(theta)), col(amp * np.sin(theta))

    skin, hair = p["skin"], p["hair"]
    fw, fh = p["face_w"], p["face_h"]
    img = np.broadcast_to(bg, (n, canvas, canvas)).astype(np.float64)
    # Head silhouette in hair tone, then the face below the hair line.
    img = _mix(img, hair, _soft_ellipse(u, v, 0.0, -0.04, fw * 1.12, fh * 1.08, px))
    face = _soft_ellipse(u, v, 0.0, 0.0, fw, fh, px)
    hair_edge = p["hair_line"] + p["hair_curve"] * (u / fw) ** 2
    below_hair = np.clip((v - hair_edge) / px + 0.5, 0.0, 1.0)
    img = _mix(img, skin, face * below_hair)
    # Eyes (height follows eye openness), brows, optional glasses.
    for side in (-1.0, 1.0):
        ex = side * p["eye_sep"]
        er = p["eye_r"]
        img = _mix(img, 0.9 * skin + 0.1, _soft_ellipse(u, v, ex, p["eye_y"], er * 1.25, er * 0.8, px))
        img = _mix(img, 0.12, _soft_ellipse(u, v, ex, p["eye_y"], er * 0.75, er * 0.65 * open_eye + 1e-3, px))
        bu = u - ex
        bv = v - (p["eye_y"] - er * 0.6 - p["brow_gap"] + side * p["brow_tilt"] * bu)
        brow = _soft_box(bu, p["brow_len"], px) * _soft_box(bv, 0.022, px)
        img = _mix(img, hair, brow)
        if p["glasses"]:
            outer = _soft_ellipse(u, v, ex, p["eye_y"], er * 1.9, er * 1.6, px)
            inner = _soft_ellipse(u, v, ex, p["eye_y"], er * 1.9 - 0.035, er * 1.6 - 0.035, px)
            img = _mix(img, 0.08, np.clip(outer - inner, 0.0, 1.0))
    # Nose: a shaded ridge plus nostrils.
    nose_mid = p["nose_top"] + p["nose_len"] / 2
    ridge = _soft_ellipse(u, v, p["nose_w"] * 0.4, nose_mid, p["nose_w"] * 0.6, p["nose_len"] / 2, px)
    img = img * (1.0 - 0.22 * ridge)
    nose_end = p["nose_top"] + p["nose_len"]
    for side in (-1.0, 1.0):
        nostril = _soft_ellipse(u, v, side * p["nose_w"], nose_end, 0.03, 0.018, px)
        img = _mix(img, 0.3 * skin, nostril)
    # Mouth: a curved band; smile > 0 lifts the corners, open_mouth thickens it.
    mw = p["mouth_w"]
    centre = p["mouth_y"] - smile * (u / mw) ** 2
    mouth = _soft_box(u, mw, px) * _soft_box(v - centre, p["mouth_h"] + open_mouth, px)
    img = _mix(img, 0.35 * skin, mouth)
    # Lighting, exposure, sensor noise.
    img = img * (1.0 + gx * X + gy * Y) * exposure
    img = img + rng.normal(0.0, 0.04, img.shape)
    return np.clip(img, 0.0, 1.0)


def make_procedural(
    n_identities: int = 10, photos_per_identity: int = 10, size: int = 16, seed: int = 0
) -> FaceSet:
    """A deterministic synthetic face set (no files, numpy/torch only).

    Each identity has its own face geometry (face ellipse, eye spacing/height/
    size, brows, nose length/width, mouth size and position, hair line,
    glasses or not) and skin/hair tones; each photo varies pose (shift,
    rotation, scale), lighting (directional gradient, exposure, background),
    expression (smile, eye and mouth openness) and pixel noise. Photos are
    drawn at ``max(64, size)`` pixels and area-downsampled to ``size``.
    Tones vary moderately, so mean brightness alone does not identify a face.

    Identity ``i`` depends only on ``(seed, i)``, so a set with fewer
    identities is a prefix of a larger one with the same seed. Returns images
    ``(n_identities * photos_per_identity, 1, size, size)`` float32 in
    ``[0, 1]``, names ``"proc-0"``, ``"proc-1"``, ...
    """
    size = check_size(size, 2)
    if n_identities < 1 or photos_per_identity < 1:
        raise RmloraError(
            f"procedural faces need at least 1 identity and 1 photo each, got "
            f"{n_identities} identities x {photos_per_identity} photos"
        )
    canvas = max(64, size)
    photos = []
    for i in range(n_identities):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), i]))
        params = _identity_params(rng)
        photos.append(_draw_identity(params, photos_per_identity, rng, canvas))
    big = torch.from_numpy(np.concatenate(photos)).float().unsqueeze(1)
    images = F.interpolate(big, size=(size, size), mode="area") if canvas != size else big
    images = images.clamp(0.0, 1.0).contiguous()
    n = images.shape[0]
    return FaceSet(
        images=images,
        labels=torch.arange(n_identities, dtype=torch.int64).repeat_interleave(photos_per_identity),
        photo_ids=torch.arange(n, dtype=torch.int64),
        names=[f"proc-{i}" for i in range(n_identities)],
        source=(
            f"procedural faces (seed {seed}, {n_identities} identities, {n} photos; "
            f"built-in synthetic stand-in, not real photos)"
        ),
        kind="procedural",
    )


# ---------------------------------------------------------------------------
# Resolver
# ---------------------------------------------------------------------------


def load_faces(
    data_dir: str | os.PathLike | None, size: int = 16, seed: int = 0, download: bool = False
) -> FaceSet:
    """Load the face set the CLI should use.

    With ``data_dir``: AT&T faces if it holds ``att_faces/`` or is itself in
    AT&T layout (``s1/1.pgm``); otherwise a folder-per-identity image set;
    :class:`RmloraError` if it does not exist or holds neither.

    Without: ``$RMLORA_DATA_DIR/att_faces`` (or ``$RMLORA_DATA_DIR`` in AT&T
    layout) if present; then scikit-learn's cached Olivetti faces (fetched only
    if ``download=True``); otherwise :func:`make_procedural` with ``seed``.
    Nothing is ever downloaded unless ``download=True``. Check
    ``FaceSet.kind`` / ``FaceSet.source`` for what was used.
    """
    size = check_size(size, 2)
    if data_dir is not None:
        root = data_folder(data_dir, "face data folder")
        if (root / "att_faces").is_dir():
            return load_att(root / "att_faces", size)
        if _looks_like_att(root):
            return load_att(root, size)
        if _image_identity_dirs(root):
            return load_image_folder(root, size)
        raise RmloraError(
            f"face data folder {root} holds neither att_faces/ (AT&T layout s<k>/<n>.pgm) "
            f"nor identity sub-folders with images"
        )
    env = os.environ.get("RMLORA_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise RmloraError(f"RMLORA_DATA_DIR={env} is not an existing folder")
        if (root / "att_faces").is_dir():
            return load_att(root / "att_faces", size)
        if _looks_like_att(root):
            return load_att(root, size)
    try:
        return load_olivetti(size=size, download=download)
    except _OlivettiNotCached:
        pass
    return make_procedural(size=size, seed=seed)


# ---------------------------------------------------------------------------
# Splits and augmentation
# ---------------------------------------------------------------------------


def split_by_photo(
    faces: FaceSet, labels: Sequence[int | str], n_val: int = 2, n_test: int = 2, seed: int = 0
) -> dict[str, FaceSet]:
    """Per-identity train/val/test split keyed by photo id.

    For each identity in ``labels`` (indices or names, in that order), its
    distinct photo ids are shuffled with a generator seeded by ``(seed, label)``;
    the first ``n_test`` go to ``"test"``, the next ``n_val`` to ``"val"`` and
    the rest to ``"train"``. All rows sharing a photo id (e.g. augmented
    copies) go to the same side, so no photo is on two sides. A given
    identity's split does not depend on which other identities are listed.

    Returns ``{"train", "val", "test"}`` FaceSets (rows grouped by identity in
    the order of ``labels``). Raises :class:`RmloraError` if an identity has
    fewer than ``n_val + n_test + 1`` photos.
    """
    if n_val < 0 or n_test < 0:
        raise RmloraError(f"n_val and n_test must be >= 0, got {n_val} and {n_test}")
    resolved: list[int] = []
    for ident in labels:
        lab = faces.resolve(ident)
        if lab not in resolved:
            resolved.append(lab)
    if not resolved:
        raise RmloraError("split_by_photo needs at least one identity")
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    pids = faces.photo_ids.cpu()
    labs = faces.labels.cpu()
    for lab in resolved:
        rows = torch.nonzero(labs == lab).flatten()
        uniq = torch.unique(pids[rows]).numpy()  # sorted
        need = n_val + n_test + 1
        if len(uniq) < need:
            raise RmloraError(
                f"identity {faces.names[lab]!r} (label {lab}) has {plural('photo', len(uniq))} in "
                f"{faces.source}; a split with {n_val} val + {n_test} test needs at least {need}"
            )
        order = np.random.default_rng(np.random.SeedSequence([int(seed), int(lab)])).permutation(len(uniq))
        shuffled = uniq[order]
        sides = {
            "test": shuffled[:n_test],
            "val": shuffled[n_test : n_test + n_val],
            "train": shuffled[n_test + n_val :],
        }
        for side, ids in sides.items():
            # Keep the chosen photo order, with any copies of a photo together.
            pos = {int(p): i for i, p in enumerate(ids)}
            sel = [int(r) for r in rows if int(pids[r]) in pos]
            sel.sort(key=lambda r: pos[int(pids[r])])
            parts[side].append(torch.tensor(sel, dtype=torch.int64))
    return {side: faces.subset(torch.cat(idx)) for side, idx in parts.items()}


def augment(images: torch.Tensor, generator: torch.Generator, copies: int) -> torch.Tensor:
    """Random training-only augmentation of a batch of photos (vectorised).

    ``images``: ``(N, 1, S, S)`` in ``[0, 1]``. Each of ``copies`` rounds
    makes one augmented copy of every photo with: integer shift of up to
    ``max(1, round(S / 16))`` pixels in x and y (edges replicated), random
    horizontal flip, brightness and contrast jitter of +-10 %, and Gaussian
    noise (std 0.02). Returns ``(copies * N, 1, S, S)`` clamped to ``[0, 1]``;
    rows ``r*N .. r*N+N-1`` are round ``r``. Deterministic given the generator
    state; random numbers are drawn on the generator's device.
    """
    if images.dim() != 4:
        raise RmloraError(f"augment expects images of shape (N, C, S, S), got {tuple(images.shape)}")
    if copies < 0:
        raise RmloraError(f"augment copies must be >= 0, got {copies}")
    n, ch, h, w = images.shape
    b = copies * n
    if b == 0:
        return images.new_zeros((0, ch, h, w))
    gdev = generator.device
    dev = images.device
    x = images.float().repeat(copies, 1, 1, 1)

    m = max(1, round(max(h, w) / 16))
    shifts = torch.randint(-m, m + 1, (b, 2), generator=generator, device=gdev).to(dev)
    flip = (torch.rand(b, generator=generator, device=gdev) < 0.5).to(dev)
    bright = (1.0 + 0.2 * (torch.rand(b, generator=generator, device=gdev) - 0.5)).to(dev)
    contrast = (1.0 + 0.2 * (torch.rand(b, generator=generator, device=gdev) - 0.5)).to(dev)
    noise = (0.02 * torch.randn((b, ch, h, w), generator=generator, device=gdev)).to(dev)

    # Shift: gather from an edge-replicated padded copy with per-image offsets.
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    rows = torch.arange(h, device=dev)[None, :] + m + shifts[:, 0:1]  # (b, h)
    cols = torch.arange(w, device=dev)[None, :] + m + shifts[:, 1:2]  # (b, w)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(ch, device=dev)[None, :, None, None]
    x = padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast[:, None, None, None] + mean
    x = x * bright[:, None, None, None] + noise
    return x.clamp(0.0, 1.0).to(images.dtype if images.is_floating_point() else torch.float32)


def augment_set(faceset: FaceSet, copies: int, generator: torch.Generator) -> FaceSet:
    """``copies`` augmented copies of every photo of ``faceset`` (see :func:`augment`).

    Labels and photo ids repeat those of the originals (round-major order), so
    each copy can be traced to its photo. The originals are not included.
    """
    return FaceSet(
        images=augment(faceset.images, generator, copies),
        labels=faceset.labels.repeat(copies),
        photo_ids=faceset.photo_ids.repeat(copies),
        names=list(faceset.names),
        source=f"{faceset.source}, augmented x{copies}",
        kind=faceset.kind,
    )
