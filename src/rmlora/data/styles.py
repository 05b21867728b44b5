"""Stylized-image datasets for the generation workload: classes are style x subject pairs.

The paper's generation task (arXiv 2601.10037; the authors' code) uses 10 painting styles x 3
animals = 30 classes, named ``<style>-<subject>`` as the authors' folder reader names them: a
class-conditional diffusion transformer learns some classes, forgets some and learns new ones.
This module gives that data as a :class:`StyleSet`:

* :func:`make_procedural` - a deterministic built-in set of 10 painting styles x 3 animal
  silhouettes (no files needed);
* :func:`load_style_folder` - a real ``root/<style>/<subject>/<image>`` collection (the
  UnlearnCanvas layout); every image must have the same size and mode;
* :func:`load_styles` - picks one of the two (used by the CLI);
* :func:`split_by_image` - per-class train/val/test split with no image on two sides.

A request may name a class (``stippling-cat``), every class of a style (``style:stippling``)
or of a subject (``subject:cat``): :meth:`StyleSet.expand`.

Procedural styles differ by technique (stroke texture and geometry: hatching,
cross-hatching, stippling, pointillist dots, wavy strokes, cel shading,
cubist facets, impasto blotches, watercolour washes, pixel art) *and* by a
palette tendency; palettes overlap on purpose, so the mean colour of an image
alone does not tell its style.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rmlora.data.base import LabelledSet, name_list, natural_key
from rmlora.data.images import check_size, image_form, is_image_file, read_square
from rmlora.errors import RmloraError

__all__ = [
    "StyleSet",
    "STYLE_NAMES",
    "SUBJECT_NAMES",
    "IMAGE_EXTENSIONS",
    "make_procedural",
    "load_style_folder",
    "load_styles",
    "split_by_image",
]

#: The built-in procedural styles, in label order.
STYLE_NAMES = (
    "hatching",
    "cross_hatch",
    "stippling",
    "pointillism",
    "wavy",
    "cel",
    "cubist",
    "impasto",
    "watercolour",
    "pixel_art",
)

#: The built-in procedural subjects (animal silhouettes), in label order.
SUBJECT_NAMES = ("cat", "bird", "fish")

#: File suffixes :func:`load_style_folder` reads (lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# ---------------------------------------------------------------------------
# StyleSet
# ---------------------------------------------------------------------------


def class_name(style: str, subject: str) -> str:
    """The name of a style x subject class: ``<style>-<subject>`` (as the authors' loader)."""
    return f"{style}-{subject}"


@dataclass
class StyleSet(LabelledSet):
    """A labelled set of small square RGB stylized images; a class is a (style, subject) pair.

    Attributes:
        images: float32 tensor ``(N, 3, S, S)`` with values in ``[0, 1]``.
        labels: int64 tensor ``(N,)``, class index ``0..K-1`` (``K = len(names)``).
        styles: int64 tensor ``(N,)``, style index into ``style_names``.
        subjects: int64 tensor ``(N,)``, subject index into ``subject_names``.
        image_ids: int64 tensor ``(N,)``, one id per original image.
        names: class names ``<style>-<subject>``, ``names[label]``.
        style_names, subject_names: the styles and subjects.
        class_style, class_subject: style and subject index of each class (K,).
        source: human-readable description of where the images came from.
        kind: ``"procedural"`` or ``"folder"``.
    """

    unit = "class"
    kinds = ("procedural", "folder")
    images: torch.Tensor
    labels: torch.Tensor
    styles: torch.Tensor
    subjects: torch.Tensor
    image_ids: torch.Tensor
    names: list[str]
    style_names: list[str]
    subject_names: list[str]
    class_style: list[int]
    class_subject: list[int]
    source: str
    kind: str

    def __post_init__(self) -> None:
        self._check_layout(self.images, "(N, 3, S, S) images", self.images.dim() == 4 and self.images.shape[1] == 3,
                           ("labels", "styles", "subjects", "image_ids"))

    @property
    def n_classes(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        """Side ``S`` of the square images in pixels."""
        return int(self.images.shape[-1])

    def expand(self, ident: str | int) -> list[int]:
        """Classes a request names: ``style:NAME`` (every class of that style, by subject),
        ``subject:NAME`` (every class of that subject, by style), or one class by name or index."""
        text = str(ident).strip()
        kind, sep, rest = text.partition(":")
        if sep and kind.strip().lower() in ("style", "subject"):
            names, of = ((self.style_names, self.class_style) if kind.strip().lower() == "style"
                         else (self.subject_names, self.class_subject))
            lowered = [n.lower() for n in names]
            rest = rest.strip()
            if rest in names:
                k = names.index(rest)
            elif lowered.count(rest.lower()) == 1:
                k = lowered.index(rest.lower())
            else:
                raise RmloraError(f"unknown {kind.strip().lower()} {rest!r} in {self.source}; known: "
                                  f"{name_list(names)}")
            found = [c for c in range(self.n_classes) if of[c] == k]
            if not found:
                raise RmloraError(f"{kind.strip().lower()} {rest!r} has no class in {self.source}")
            return found
        return [self.resolve(ident)]

    def resolve(self, ident: str | int) -> int:
        try:
            return super().resolve(ident)
        except RmloraError as exc:
            raise RmloraError(f"{exc}; or name every class of a style (style:NAME) or a subject (subject:NAME)") \
                from None


# ---------------------------------------------------------------------------
# Procedural drawing helpers (numpy, float32, vectorised over a batch)
# ---------------------------------------------------------------------------


def _c(a) -> np.ndarray:
    """(n,) -> (n, 1, 1) for broadcasting a per-image value over the canvas."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _col(c: np.ndarray) -> np.ndarray:
    """(n, 3) colours -> (n, 3, 1, 1)."""
    return np.asarray(c, dtype=np.float32)[:, :, None, None]


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend images/colours ``a`` -> ``b`` by field ``t`` (n, R, R) (broadcast over channels)."""
    return a + (b - a) * t[:, None]


def _hsv(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs (n,), output (n, 3) float32 in [0, 1]."""
    h = np.mod(np.asarray(h, dtype=np.float64), 1.0)
    s = np.clip(np.asarray(s, dtype=np.float64), 0, 1)
    v = np.clip(np.asarray(v, dtype=np.float64), 0, 1)
    k = np.mod(np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0, 6.0)
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int, res: int) -> np.ndarray:
    """Value noise: uniform [0,1] on a ``cells`` x ``cells`` grid, bilinearly upsampled to ``res``."""
    g = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    up = F.interpolate(g, size=(res, res), mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def _blur(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of (n, R, R) fields (replicate padding)."""
    rad = max(1, int(math.ceil(3 * sigma_px)))
    t = torch.arange(-rad, rad + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    y = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    y = F.pad(y, (rad, rad, rad, rad), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y[:, 0].numpy()


def _stripes(s: np.ndarray, width: np.ndarray | float, period: float, px: float) -> np.ndarray:
    """Antialiased lines at integer values of ``s`` (in periods), ``width`` a fraction of the period."""
    dl = np.abs(np.mod(s + 0.5, 1.0) - 0.5) * period  # distance to the nearest line centre
    return np.clip((width * period / 2 - dl) / px + 0.5, 0.0, 1.0)


def _ellipse_sdf(x, y, cx, cy, a, b):
    """Approximate signed distance (negative inside) to an axis-aligned ellipse."""
    r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return (r - 1.0) * min(a, b)


def _triangle_sdf(x, y, p1, p2, p3):
    """Signed distance to a triangle's edge lines (exact inside, approximate outside)."""
    pts = (p1, p2, p3)
    d = None
    for i in range(3):
        (ax, ay), (bx, by) = pts[i], pts[(i + 1) % 3]
        ox, oy = pts[(i + 2) % 3]
        nx, ny = by - ay, -(bx - ax)
        ln = math.hypot(nx, ny)
        nx, ny = nx / ln, ny / ln
        if (ox - ax) * nx + (oy - ay) * ny > 0:  # make the normal point outwards
            nx, ny = -nx, -ny
        e = (x - ax) * nx + (y - ay) * ny
        d = e if d is None else np.maximum(d, e)
    return d


def _cat_sdf(x, y):
    parts = [
        _ellipse_sdf(x, y, -0.08, 0.18, 0.46, 0.27),  # body
        _ellipse_sdf(x, y, 0.40, -0.16, 0.22, 0.20),  # head
        _triangle_sdf(x, y, (0.22, -0.24), (0.26, -0.56), (0.40, -0.30)),  # ears
        _triangle_sdf(x, y, (0.40, -0.30), (0.56, -0.54), (0.58, -0.20)),
        _ellipse_sdf(x, y, -0.62, -0.14, 0.08, 0.30),  # tail
        _ellipse_sdf(x, y, -0.32, 0.46, 0.07, 0.14),  # legs
        _ellipse_sdf(x, y, 0.18, 0.46, 0.07, 0.14),
    ]
    return np.minimum.reduce(parts)


def _bird_sdf(x, y):
    parts = [
        _ellipse_sdf(x, y, 0.0, 0.10, 0.36, 0.22),  # body
        _ellipse_sdf(x, y, 0.36, -0.16, 0.16, 0.15),  # head
        _triangle_sdf(x, y, (0.48, -0.24), (0.74, -0.14), (0.48, -0.06)),  # beak
        _triangle_sdf(x, y, (-0.22, 0.02), (0.18, 0.02), (-0.34, -0.62)),  # raised wing
        _triangle_sdf(x, y, (-0.26, 0.06), (-0.74, -0.12), (-0.70, 0.30)),  # tail
        _triangle_sdf(x, y, (-0.02, 0.28), (0.06, 0.28), (0.02, 0.52)),  # leg
    ]
    return np.minimum.reduce(parts)


def _fish_sdf(x, y):
    parts = [
        _ellipse_sdf(x, y, 0.08, 0.0, 0.52, 0.28),  # body
        _triangle_sdf(x, y, (-0.36, 0.0), (-0.80, -0.36), (-0.80, 0.36)),  # tail fin
        _triangle_sdf(x, y, (-0.14, -0.20), (0.20, -0.22), (-0.10, -0.50)),  # dorsal fin
        _triangle_sdf(x, y, (0.0, 0.20), (0.16, 0.22), (-0.04, 0.42)),  # belly fin
    ]
    return np.minimum.reduce(parts)


_CONTENT_SDFS: tuple[Callable, ...] = (_cat_sdf, _bird_sdf, _fish_sdf)


def _content_fields(content: np.ndarray, rng: np.random.Generator, res: int):
    """Silhouette SDF ``d`` (n, R, R) in canvas units (canvas spans [-1, 1]) and a
    lighting field ``shade`` in [-1, 1], for animals ``content`` (n,) posed at random
    position / scale / rotation / mirror."""
    n = len(content)
    px = 2.0 / res
    c = ((np.arange(res) + 0.5) * px - 1.0).astype(np.float32)
    U = c[None, None, :]
    V = c[None, :, None]
    rot = _c(np.deg2rad(rng.uniform(-25, 25, n)))
    scale = _c(rng.uniform(0.72, 1.05, n))
    tx = _c(rng.uniform(-0.15, 0.15, n))
    ty = _c(rng.uniform(-0.15, 0.15, n))
    mirror = _c(np.where(rng.random(n) < 0.5, -1.0, 1.0))
    cr, sr = np.cos(rot), np.sin(rot)
    x = (cr * (U - tx) + sr * (V - ty)) / scale * mirror
    y = (-sr * (U - tx) + cr * (V - ty)) / scale
    d = np.empty((n, res, res), dtype=np.float32)
    for k, fn in enumerate(_CONTENT_SDFS):
        sel = np.flatnonzero(content == k)
        if sel.size:
            d[sel] = fn(x[sel], y[sel]) * scale[sel]
    la = rng.uniform(0, 2 * np.pi, n)
    shade = np.clip(_c(np.cos(la)) * (U - tx) * 1.6 + _c(np.sin(la)) * (V - ty) * 1.6, -1, 1)
    return d.astype(np.float32), shade.astype(np.float32), (U, V)


def _fill(d: np.ndarray, px: float, grow: float = 0.0) -> np.ndarray:
    """Antialiased inside mask of an SDF (optionally grown by ``grow`` units)."""
    return np.clip((grow - d) / px + 0.5, 0.0, 1.0)


def _band(d: np.ndarray, half: float, px: float) -> np.ndarray:
    """Antialiased |d| < half (an outline of the silhouette)."""
    return np.clip((half - np.abs(d)) / px + 0.5, 0.0, 1.0)


# Palette tendencies per style: (fg hue centre, hue spread, fg sat range, fg value
# range, bg hue offset from fg, bg sat range, bg value range). Spreads are wide and
# ranges overlap between styles so that colour alone is a weak cue.
_PALETTES = {
    "hatching": (0.08, 0.5, (0.3, 0.8), (0.08, 0.35), 0.0, (0.05, 0.3), (0.78, 1.0)),
    "cross_hatch": (0.60, 0.5, (0.3, 0.8), (0.08, 0.35), 0.5, (0.05, 0.3), (0.78, 1.0)),
    "stippling": (0.95, 0.5, (0.2, 0.8), (0.05, 0.35), 0.1, (0.05, 0.3), (0.78, 1.0)),
    "pointillism": (0.15, 0.3, (0.6, 1.0), (0.35, 0.8), 0.45, (0.3, 0.8), (0.6, 1.0)),
    "wavy": (0.62, 0.3, (0.5, 0.95), (0.45, 0.95), 0.45, (0.4, 0.9), (0.35, 0.9)),
    "cel": (0.0, 0.5, (0.5, 1.0), (0.55, 1.0), 0.5, (0.2, 0.7), (0.6, 1.0)),
    "cubist": (0.08, 0.3, (0.3, 0.8), (0.35, 0.85), 0.35, (0.2, 0.7), (0.3, 0.8)),
    "impasto": (0.30, 0.35, (0.4, 0.9), (0.35, 0.9), 0.55, (0.3, 0.8), (0.3, 0.85)),
    "watercolour": (0.55, 0.5, (0.4, 0.9), (0.45, 0.9), 0.15, (0.05, 0.4), (0.8, 1.0)),
    "pixel_art": (0.80, 0.5, (0.6, 1.0), (0.6, 1.0), 0.5, (0.4, 1.0), (0.2, 0.8)),
}


def _palette(style: str, n: int, rng: np.random.Generator):
    hc, spread, fs, fv, boff, bs, bv = _PALETTES[style]
    h = hc + rng.uniform(-spread, spread, n)
    fg = _hsv(h, rng.uniform(*fs, n), rng.uniform(*fv, n))
    bh = h + boff + rng.uniform(-0.12, 0.12, n)
    bg = _hsv(bh, rng.uniform(*bs, n), rng.uniform(*bv, n))
    acc = _hsv(h + rng.uniform(0.25, 0.75, n), rng.uniform(0.4, 1.0, n), rng.uniform(0.4, 1.0, n))
    return fg, bg, acc


# ---------------------------------------------------------------------------
# The ten style renderers. Each gets the silhouette SDF ``d`` (n, R, R), the
# lighting field ``shade`` (n, R, R), canvas coordinates (U, V), the palette
# (n, 3) colours, ``px`` (one hi-res pixel, canvas units), ``fp`` (one final
# pixel, canvas units) and ``rng``; it returns (n, 3, R, R) float32.
# ---------------------------------------------------------------------------


def _angle(rng, n, base_choices, jitter_deg):
    base = rng.choice(np.asarray(base_choices, dtype=np.float64), n)
    return _c(np.deg2rad(base + rng.uniform(-jitter_deg, jitter_deg, n)))


def _paper(bg, n, res, rng, amount=0.04):
    grain = _smooth_noise(rng, n, max(4, res // 4), res) - 0.5
    return _col(bg) * (1.0 + amount * grain[:, None])


def _r_hatching(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Parallel ink lines in one direction; dense and thick inside the figure."""
    U, V = UV
    n, res = d.shape[0], d.shape[-1]
    th = _angle(rng, n, [45.0, 135.0], 12.0)
    period = 4.0 * fp
    s = (U * np.cos(th) + V * np.sin(th)) / period + _c(rng.random(n))
    inside = _fill(d, px)
    width = 0.16 + inside * (0.34 + 0.14 * (shade < 0))
    ink = np.maximum(_stripes(s, width, period, px), _band(d, 0.6 * fp, px))
    paper = _paper(bg, n, res, rng)
    paper = _lerp(paper, _col(0.8 * bg + 0.2 * fg), inside)
    return _lerp(paper, np.broadcast_to(_col(fg), paper.shape), ink)


def _r_cross_hatch(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Fine crossing ink lines (two directions), a third direction in shadow."""
    U, V = UV
    n, res = d.shape[0], d.shape[-1]
    th = _angle(rng, n, [0.0, 45.0], 8.0)
    period = 3.0 * fp
    ph = _c(rng.random(n))
    s1 = (U * np.cos(th) + V * np.sin(th)) / period + ph
    s2 = (-U * np.sin(th) + V * np.cos(th)) / period + ph
    s3 = (U * np.cos(th + np.pi / 4) + V * np.sin(th + np.pi / 4)) / period
    inside = _fill(d, px)
    w = 0.12 + 0.16 * inside
    ink = np.maximum(_stripes(s1, w, period, px), _stripes(s2, w, period, px))
    ink = np.maximum(ink, _stripes(s3, 0.22, period, px) * inside * (shade < -0.1))
    ink = np.maximum(ink, _band(d, 0.45 * fp, px))
    paper = _paper(bg, n, res, rng)
    return _lerp(paper, np.broadcast_to(_col(fg), paper.shape), ink)


def _r_stippling(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Monochrome ink dots on paper; dot density follows figure and shadow."""
    n, res = d.shape[0], d.shape[-1]
    final = res // 2
    inside = _fill(d, px)
    density = 0.05 + inside * (0.30 + 0.25 * np.clip(-shade, 0, 1))
    density = density + 0.6 * _band(d, 0.5 * fp, px)
    cell = rng.random((n, final, final), dtype=np.float32)
    cell = np.repeat(np.repeat(cell, 2, axis=1), 2, axis=2)
    dens = density.reshape(n, final, 2, final, 2).mean(axis=(2, 4))
    dens = np.repeat(np.repeat(dens, 2, axis=1), 2, axis=2)
    dots = (cell < dens).astype(np.float32)
    paper = _paper(bg, n, res, rng)
    return _lerp(paper, np.broadcast_to(_col(fg), paper.shape), dots)


def _cells(n, res, cell_px, rng):
    """Per-pixel (n, R, R) distance (in hi-res px) to a jittered point in its cell,
    and the cell index grids (R,) for rows and columns."""
    g = res // cell_px
    jit = rng.uniform(-0.2, 0.2, (n, 2, g, g)).astype(np.float32) * cell_px
    idx = np.arange(res) // cell_px
    off = (np.arange(res) % cell_px + 0.5 - cell_px / 2).astype(np.float32)
    jy = jit[:, 0][:, idx][:, :, idx]
    jx = jit[:, 1][:, idx][:, :, idx]
    dist = np.sqrt((off[None, :, None] - jy) ** 2 + (off[None, None, :] - jx) ** 2)
    return dist, idx, g


def _r_pointillism(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Dense round dots of jittered pure colours over a pale ground."""
    n, res = d.shape[0], d.shape[-1]
    cell_px = 4  # 2 final pixels
    dist, idx, g = _cells(n, res, cell_px, rng)
    inside = _fill(d, px)
    inside_c = inside.reshape(n, g, cell_px, g, cell_px).mean(axis=(2, 4))
    base = _col(bg)[:, :, :, :] * (1 - inside_c[:, None]) + _col(fg) * inside_c[:, None]
    use_acc = (rng.random((n, 1, g, g)) < 0.12).astype(np.float32)
    base = base * (1 - use_acc) + _col(acc) * use_acc
    colours = np.clip(base + rng.uniform(-0.12, 0.12, (n, 3, g, g)).astype(np.float32), 0, 1)
    colours = colours[:, :, idx][:, :, :, idx]
    dot = np.clip((1.75 - dist) + 0.5, 0.0, 1.0)
    ground = np.broadcast_to(_col(0.35 * bg + 0.65), colours.shape)
    return _lerp(ground, colours, dot)


def _r_wavy(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Swirling wavy brush strokes; the figure's strokes run across the ground's."""
    U, V = UV
    n = d.shape[0]
    inside = _fill(d, px)
    th = _c(rng.uniform(0, np.pi, n))
    th2 = th + np.pi / 2
    period = 3.5 * fp
    amp = _c(rng.uniform(0.35, 0.6, n))
    wl = _c(rng.uniform(0.35, 0.55, n))
    ph = _c(rng.uniform(0, 2 * np.pi, n))

    def waves(t):
        a = U * np.cos(t) + V * np.sin(t)
        b = -U * np.sin(t) + V * np.cos(t)
        s = a / period + amp * np.sin(2 * np.pi * b / wl + ph)
        return 0.5 + 0.5 * np.tanh(2.5 * np.sin(2 * np.pi * s))

    wb, wf = waves(th), waves(th2)
    shp = (n, 3) + d.shape[1:]
    ground = _lerp(np.broadcast_to(_col(bg), shp), np.broadcast_to(_col(0.55 * bg + 0.45 * acc), shp), wb)
    figure = _lerp(np.broadcast_to(_col(fg), ground.shape), np.broadcast_to(_col(0.5 * fg + 0.5), ground.shape), wf)
    img = _lerp(ground, figure, inside)
    return _lerp(img, np.broadcast_to(_col(0.35 * fg), img.shape), _band(d, 0.5 * fp, px))


def _r_cel(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Flat cel shading: flat ground, two hard-edged tones, thick black outline."""
    n = d.shape[0]
    shp = (n, 3) + d.shape[1:]
    inside = _fill(d, px)
    lit = np.clip(shade / px * 0.02 + 0.5, 0, 1)
    tone = _lerp(np.broadcast_to(_col(0.55 * fg), shp), np.broadcast_to(_col(fg), shp), lit)
    img = _lerp(np.broadcast_to(_col(bg), shp), tone, inside)
    return _lerp(img, np.zeros(shp, np.float32) + 0.05, _band(d, 0.7 * fp, px))


def _r_cubist(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Voronoi facets with their own tone and gradient, dark facet edges."""
    U, V = UV
    n, res = d.shape[0], d.shape[-1]
    k = 18
    sx = rng.uniform(-1, 1, (n, k, 1, 1)).astype(np.float32)
    sy = rng.uniform(-1, 1, (n, k, 1, 1)).astype(np.float32)
    d1 = np.full((n, res, res), np.inf, np.float32)  # nearest and second-nearest seed
    d2 = np.full((n, res, res), np.inf, np.float32)
    owner = np.zeros((n, res, res), np.int64)
    for j in range(k):
        dj = np.sqrt((U - sx[:, j]) ** 2 + (V - sy[:, j]) ** 2)
        closer = dj < d1
        d2 = np.where(closer, d1, np.minimum(d2, dj))
        d1 = np.where(closer, dj, d1)
        owner[closer] = j
    tone = rng.uniform(0.55, 1.25, (n, k)).astype(np.float32)
    gdir = rng.uniform(0, 2 * np.pi, (n, k))
    gx, gy = (np.cos(gdir) * 0.5).astype(np.float32), (np.sin(gdir) * 0.5).astype(np.float32)
    rows = np.arange(n)[:, None, None]
    t = tone[rows, owner]
    grad = gx[rows, owner] * (U - sx[rows, owner, 0, 0]) + gy[rows, owner] * (V - sy[rows, owner, 0, 0])
    fac = (t + grad)[:, None]
    inside = _fill(d, px)
    # Each facet is split along the silhouette: figure side fg, ground side bg.
    base = _lerp(np.broadcast_to(_col(bg), (n, 3, res, res)), np.broadcast_to(_col(fg), (n, 3, res, res)), inside)
    mixacc = (rng.random((n, k)) < 0.25).astype(np.float32)[rows, owner]
    base = _lerp(base, np.broadcast_to(_col(acc), base.shape), 0.5 * mixacc)
    img = np.clip(base * fac, 0, 1)
    edge = np.clip((0.7 * fp - (d2 - d1)) / px + 0.5, 0.0, 1.0)
    edge = np.maximum(edge, _band(d, 0.4 * fp, px) * 0.8)
    return _lerp(img, np.broadcast_to(_col(0.25 * fg), img.shape), edge)


def _r_impasto(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Thick overlapping paint blotches with embossed highlights and shadows."""
    U, V = UV
    n, res = d.shape[0], d.shape[-1]
    inside = _fill(d, px)
    img = _lerp(np.broadcast_to(_col(bg), (n, 3, res, res)), np.broadcast_to(_col(fg), (n, 3, res, res)), inside).copy()
    height = np.zeros((n, res, res), np.float32)
    for _ in range(34):
        cx = rng.uniform(-1, 1, n)
        cy = rng.uniform(-1, 1, n)
        a = rng.uniform(2.5, 5.0, n) * fp
        b = a * rng.uniform(0.4, 0.8, n)
        ang = rng.uniform(0, np.pi, n)
        ca, sa = _c(np.cos(ang)), _c(np.sin(ang))
        du, dv = U - _c(cx), V - _c(cy)
        r2 = ((ca * du + sa * dv) / _c(a)) ** 2 + ((-sa * du + ca * dv) / _c(b)) ** 2
        blob = np.clip((1.0 - r2) * 3.0, 0.0, 1.0)
        # The blotch takes the colour under its centre (figure or ground), jittered.
        ix = np.clip(((cx + 1) / 2 * res).astype(int), 0, res - 1)
        iy = np.clip(((cy + 1) / 2 * res).astype(int), 0, res - 1)
        under = img[np.arange(n), :, iy, ix]
        colour = np.clip(under * rng.uniform(0.8, 1.2, (n, 1)) + rng.uniform(-0.08, 0.08, (n, 3)), 0, 1)
        img = _lerp(img, np.broadcast_to(_col(colour), img.shape), blob)
        height = height * (1 - blob) + blob * np.clip(1.0 - r2, 0, 1)
    gy_, gx_ = np.gradient(height, axis=(1, 2))
    light = np.clip(-(gx_ + gy_) * 2.2, -0.35, 0.35)
    return np.clip(img * (1.0 + light[:, None]) + 0.25 * np.clip(light, 0, None)[:, None], 0, 1)


def _r_watercolour(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Soft washes with irregular bleeding edges, darker rims and pigment blooms."""
    n, res = d.shape[0], d.shape[-1]
    wobble = (_smooth_noise(rng, n, 6, res) - 0.5) * 0.18
    inside = _fill(d + wobble, px * 3.0)
    soft = _blur(inside, sigma_px=2.5)
    bloom = _smooth_noise(rng, n, 5, res)
    pigment = soft * (0.55 + 0.45 * bloom)
    rim = np.clip(1.0 - np.abs(soft - 0.5) / 0.22, 0.0, 1.0)
    pigment = np.clip(pigment + 0.45 * rim * soft.clip(0.2, 1), 0, 1)
    paper = _paper(np.full_like(bg, 0.97), n, res, rng, amount=0.05)
    wash = _smooth_noise(rng, n, 3, res) * 0.45
    img = paper * _lerp(np.ones_like(paper), np.broadcast_to(_col(0.5 * bg + 0.5), paper.shape), wash)
    wet = _col(0.8 * fg + 0.2)
    return img * _lerp(np.ones_like(img), np.broadcast_to(wet, img.shape), pigment)


def _r_pixel_art(d, shade, UV, fg, bg, acc, px, fp, rng):
    """Blocky 2x2-pixel art with a posterised palette and a dark outline."""
    n, res = d.shape[0], d.shape[-1]
    shp = (n, 3, res, res)
    inside = _fill(d, px)
    tone = _lerp(np.broadcast_to(_col(0.6 * fg), shp), np.broadcast_to(_col(fg), shp), (shade > 0).astype(np.float32))
    img = _lerp(np.broadcast_to(_col(bg), shp), tone, inside)
    img = _lerp(img, np.zeros(shp, np.float32) + 0.08, _band(d, 0.5 * fp, px))
    b = 4  # 2 final pixels
    g = res // b
    blocks = img.reshape(n, 3, g, b, g, b).mean(axis=(3, 5))
    # Checker-dithered ground, as in old palettes.
    checker = ((np.arange(g)[:, None] + np.arange(g)[None, :]) % 2).astype(np.float32)
    blocks = blocks + (checker - 0.5) * 0.08
    levels = 3.0
    blocks = np.round(np.clip(blocks, 0, 1) * levels) / levels
    return np.repeat(np.repeat(blocks, b, axis=2), b, axis=3)


_RENDERERS: dict[str, Callable] = {
    "hatching": _r_hatching,
    "cross_hatch": _r_cross_hatch,
    "stippling": _r_stippling,
    "pointillism": _r_pointillism,
    "wavy": _r_wavy,
    "cel": _r_cel,
    "cubist": _r_cubist,
    "impasto": _r_impasto,
    "watercolour": _r_watercolour,
    "pixel_art": _r_pixel_art,
}


def _render_style(style_idx: int, content: np.ndarray, size: int, seed: int) -> np.ndarray:
    """All images of one style, (n, 3, size, size) float32 in [0, 1]."""
    name = STYLE_NAMES[style_idx]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919, style_idx]))
    res = 2 * size
    px = 2.0 / res
    fp = 2.0 / size
    d, shade, uv = _content_fields(content, rng, res)
    fg, bg, acc = _palette(name, len(content), rng)
    img = _RENDERERS[name](d, shade, uv, fg, bg, acc, px, fp, rng)
    img = np.asarray(img, dtype=np.float32)
    n = img.shape[0]
    small = img.reshape(n, 3, size, 2, size, 2).mean(axis=(3, 5))
    return np.clip(small, 0.0, 1.0)


def _set(images: torch.Tensor, styles: list[int], subjects: list[int], style_names: list[str],
         subject_names: list[str], source: str, kind: str) -> StyleSet:
    """A :class:`StyleSet` whose classes are the (style, subject) pairs present, style-major."""
    pairs = sorted(set(zip(styles, subjects)))
    index = {pr: k for k, pr in enumerate(pairs)}
    n = images.shape[0]
    return StyleSet(
        images=images, labels=torch.tensor([index[pr] for pr in zip(styles, subjects)], dtype=torch.int64),
        styles=torch.tensor(styles, dtype=torch.int64), subjects=torch.tensor(subjects, dtype=torch.int64),
        image_ids=torch.arange(n, dtype=torch.int64),
        names=[class_name(style_names[a], subject_names[b]) for a, b in pairs],
        style_names=list(style_names), subject_names=list(subject_names),
        class_style=[a for a, _ in pairs], class_subject=[b for _, b in pairs], source=source, kind=kind)


def make_procedural(
    n_styles: int = 10, n_subjects: int = 3, per_class: int = 40, size: int = 32, seed: int = 0
) -> StyleSet:
    """A deterministic built-in stylized image set (no files; numpy/torch only).

    ``n_styles`` (1..10) painting styles from :data:`STYLE_NAMES` x ``n_subjects``
    (1..3) animal silhouettes from :data:`SUBJECT_NAMES` x ``per_class`` images: the classes
    ``<style>-<subject>``, style-major. Every image poses its animal (cat / bird / fish made of
    ellipses and triangles) at a random position, scale, rotation and mirror, then paints it
    in its style: oriented hatching, fine cross-hatching, ink stippling,
    pointillist colour dots, wavy swirling strokes, flat cel shading with a
    thick outline, cubist Voronoi facets, impasto blotches with embossed
    relief, watercolour washes with bleeding dark-rimmed edges, or posterised
    2x2-pixel art. Each style has a palette tendency but hues, saturations and
    values vary widely and overlap between styles, so the technique - not the
    mean colour - identifies the style. Drawn at ``2 * size`` and
    area-downsampled.

    Style ``k``'s images depend only on ``(seed, k, n_subjects, per_class,
    size)``, so a set with fewer styles is a prefix of one with more. Returns images
    ``(n_styles * n_subjects * per_class, 3, size, size)`` float32 in ``[0, 1]``.
    """
    size = check_size(size, 4)
    for what, val, hi in (("n_styles", n_styles, len(STYLE_NAMES)), ("n_subjects", n_subjects, len(SUBJECT_NAMES))):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or not 1 <= val <= hi:
            raise RmloraError(f"procedural styles: {what} must be an integer in 1..{hi}, got {val!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise RmloraError(f"procedural styles: per_class must be an integer >= 1, got {per_class!r}")
    if size % 2:
        raise RmloraError(f"procedural styles need an even image size, got {size}")
    subject = np.repeat(np.arange(n_subjects), per_class)
    chunks = [_render_style(k, subject, size, seed) for k in range(n_styles)]
    images = torch.from_numpy(np.concatenate(chunks)).contiguous()
    return _set(images, np.repeat(np.arange(n_styles), n_subjects * per_class).tolist(),
                np.tile(subject, n_styles).tolist(), list(STYLE_NAMES[:n_styles]), list(SUBJECT_NAMES[:n_subjects]),
                f"procedural styles (seed {seed}, {n_styles} styles x {n_subjects} subjects x {per_class} images, "
                f"{size}x{size}; built-in synthetic stand-in, not real paintings)", "procedural")


# ---------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------


def _subdirs(p: Path) -> list[Path]:
    return sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: natural_key(d.name))


def _read_rgb(path: Path, size: int) -> np.ndarray:
    """Read one image: RGB, central square crop, resized; float32 (3, size, size) in [0, 1]."""
    from PIL import Image

    sq = read_square(path, colour=True)
    side = sq.size[0]
    if sq.size != (size, size):
        sq = sq.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0 if side > 3 * size else None)
    arr = np.asarray(sq, dtype=np.float32) / np.float32(255.0)
    return np.clip(arr, 0.0, 1.0).transpose(2, 0, 1)


def load_style_folder(root: str | os.PathLike, size: int = 32) -> StyleSet:
    """Load a real style dataset laid out as ``root/<style>/<subject>/<image files>``.

    This is the UnlearnCanvas layout (e.g. ``Van_Gogh/Cats/1.jpg``); the classes are the
    ``<style>-<subject>`` pairs present. Any PIL-readable file with a suffix in
    :data:`IMAGE_EXTENSIONS` is read; every image must have the same size and mode (a
    collection is prepared as one), then it is read as RGB, cropped to its central square and
    resized to ``size`` x ``size``. Style and subject folders are sorted naturally (``s2`` <
    ``s10``); images lying directly in a style folder are not read. Returns images
    ``(N, 3, size, size)`` float32 in ``[0, 1]``.

    Raises :class:`RmloraError` if ``root`` is missing, holds no
    ``<style>/<subject>/<image>`` files, an image cannot be read, or two images differ in size or mode.
    """
    size = check_size(size, 4)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RmloraError(f"style image folder {root} does not exist")
    found: list[tuple[str, str, list[Path]]] = []
    for sd in _subdirs(root):
        for cd in _subdirs(sd):
            files = sorted((p for p in cd.iterdir() if is_image_file(p, IMAGE_EXTENSIONS)),
                           key=lambda p: natural_key(p.name))
            if files:
                found.append((sd.name, cd.name, files))
    if not found:
        raise RmloraError(
            f"no images in {root}: expected <style>/<subject>/<image> files "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        )
    style_names = sorted({s for s, _, _ in found}, key=natural_key)
    subject_names = sorted({c for _, c, _ in found}, key=natural_key)
    first: tuple[Path, tuple] | None = None
    imgs: list[np.ndarray] = []
    styles: list[int] = []
    subjects: list[int] = []
    for s, c, files in found:
        for f in files:
            form = image_form(f)
            if first is None:
                first = (f, form)
            elif form != first[1]:
                raise RmloraError(f"{f} is {form[0][0]}x{form[0][1]} {form[1]} but {first[0]} is "
                                  f"{first[1][0][0]}x{first[1][0][1]} {first[1][1]}: every image of a style folder "
                                  "must have the same size and mode")
            imgs.append(_read_rgb(f, size))
            styles.append(style_names.index(s))
            subjects.append(subject_names.index(c))
    n = len(imgs)
    return _set(torch.from_numpy(np.stack(imgs)).contiguous(), styles, subjects, style_names, subject_names,
                f"style image folder {root} ({len(style_names)} styles, {len(subject_names)} subjects, {n} images)",
                "folder")


def load_styles(data_dir: str | os.PathLike | None, seed: int = 0, size: int = 32) -> StyleSet:
    """The style set the CLI should use: :func:`load_style_folder` on ``data_dir``
    if given (it must exist), else :func:`make_procedural` with ``seed``."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise RmloraError(f"style data folder {root} does not exist")
        return load_style_folder(root, size=size)
    return make_procedural(seed=seed, size=size)


# ---------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------


def split_by_image(
    ds: StyleSet, labels: Sequence[int | str], n_val: int, n_test: int, seed: int = 0
) -> dict[str, StyleSet]:
    """Per-class train/val/test split keyed by image id.

    For each class in ``labels`` (indices or names, duplicates ignored), its
    distinct image ids are shuffled with a generator seeded by ``(seed,
    label)``; the first ``n_test`` go to ``"test"``, the next
    ``n_val`` to ``"val"`` and the rest to ``"train"``. Rows sharing an image
    id stay on one side, so no image is on two sides. A class's split does not
    depend on which other classes are listed. Labels keep their class indices.

    Returns ``{"train", "val", "test"}`` StyleSets grouped by class in the
    order of ``labels``. Raises :class:`RmloraError` if a class has fewer than
    ``n_val + n_test + 1`` images.
    """
    if isinstance(n_val, bool) or isinstance(n_test, bool) or n_val < 0 or n_test < 0:
        raise RmloraError(f"n_val and n_test must be integers >= 0, got {n_val} and {n_test}")
    resolved: list[int] = []
    for ident in labels:
        lab = ds.resolve(ident)
        if lab not in resolved:
            resolved.append(lab)
    if not resolved:
        raise RmloraError(f"split_by_image needs at least one class; known: {name_list(ds.names)}")
    ids = ds.image_ids.cpu().numpy()
    labs = ds.labels.cpu().numpy()
    cons = ds.subjects.cpu().numpy()
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for lab in resolved:
        rows = np.flatnonzero(labs == lab)
        uniq, first = np.unique(ids[rows], return_index=True)
        need = n_val + n_test + 1
        if len(uniq) < need:
            raise RmloraError(
                f"class {ds.names[lab]!r} (label {lab}) has {len(uniq)} images in {ds.source}; "
                f"a split with {n_val} val + {n_test} test needs at least {need}"
            )
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(lab)]))
        perm = rng.permutation(len(uniq))
        ucons = cons[rows[first]][perm]
        # Round-robin over contents: rank of each image within its content class.
        rank = np.empty(len(perm), dtype=np.int64)
        for c in np.unique(ucons):
            sel = np.flatnonzero(ucons == c)
            rank[sel] = np.arange(len(sel))
        order = uniq[perm][np.lexsort((ucons, rank))]
        sides = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        for side, chosen in sides.items():
            pos = {int(p): i for i, p in enumerate(chosen)}
            sel = [int(r) for r in rows if int(ids[r]) in pos]
            sel.sort(key=lambda r: pos[int(ids[r])])
            parts[side].append(np.asarray(sel, dtype=np.int64))
    return {side: ds.subset(torch.from_numpy(np.concatenate(idx))) for side, idx in parts.items()}
