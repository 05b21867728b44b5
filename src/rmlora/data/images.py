"""Reading image files for the photo and style loaders: one error line for any bad file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmlora.errors import RmloraError
from rmlora.runinfo import note_input

_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")


def is_image_file(p: Path, extensions: Sequence[str]) -> bool:
    """A visible file whose suffix (lower case) is one of ``extensions``."""
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions


def check_size(size: Any, minimum: int) -> int:
    """``size`` (pixels) as an int, refused with one error line below ``minimum``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum:
        raise RmloraError(f"image size must be an integer >= {minimum}, got {size!r}")
    return int(size)


def image_form(path: Path) -> tuple[tuple[int, int], str]:
    """((width, height), PIL mode) of the image file ``path``, read from its header; an
    unreadable file raises :class:`RmloraError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RmloraError(f"cannot read image {path}: {exc}") from exc


def read_square(path: Path, colour: bool) -> Any:
    """The central square of the image file ``path`` as a PIL image.

    ``colour``: mode RGB, transparency composited over white. Otherwise mode L,
    or F for 16-bit and float files (scaled to [0, 1], keeping their depth).
    An unreadable or empty file raises :class:`RmloraError`.
    """
    from PIL import Image, UnidentifiedImageError

    note_input(path, "data")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _HIGH_DEPTH:
                arr = np.asarray(im, dtype=np.float64)
                hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                if im.mode == "F" and arr.max() <= 1.0:
                    hi = 1.0
                unit = np.clip(arr / hi, 0, 1)
                img = (Image.fromarray((unit * 255).astype(np.uint8), mode="L").convert("RGB") if colour
                       else Image.fromarray(unit.astype(np.float32), mode="F"))
            elif not colour:
                img = im.convert("L")
            elif im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba).convert("RGB")
            else:
                img = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RmloraError(f"cannot read image {path}: {exc}") from exc
    w, h = img.size
    if w < 1 or h < 1:
        raise RmloraError(f"cannot read image {path}: empty image")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))
