"""SRAM capacity of the digital unit: adapters and digital rows must fit."""

from __future__ import annotations

import numpy as np

from rmlora.errors import RmloraError


def _bits(what: str, bits: object) -> int:
    """``bits`` as an int, refused unless it is an integer >= 0."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 0:
        raise RmloraError(f"{what}: a size in bits must be an integer >= 0, got {bits!r}")
    return int(bits)


def _fmt(bits: int) -> str:
    return f"{bits} bits ({bits / 8 / 1024:.1f} KiB)"


class SramBuffer:
    """Allocations by name of a buffer of ``capacity_bits``."""

    def __init__(self, capacity_bits: int) -> None:
        self.capacity_bits = _bits("SRAM capacity", capacity_bits)
        self.blocks: dict[str, int] = {}

    @property
    def used_bits(self) -> int:
        return sum(self.blocks.values())

    @property
    def free_bits(self) -> int:
        return self.capacity_bits - self.used_bits

    def allocate(self, name: str, bits: int) -> None:
        """Reserve ``bits`` (an integer >= 0) for ``name`` (replacing an earlier block of that
        name) or refuse."""
        bits = _bits(f"adapter {name!r}", bits)
        others = self.used_bits - self.blocks.get(name, 0)
        if others + bits > self.capacity_bits:
            raise RmloraError(f"adapter {name!r} needs {_fmt(bits)} but the SRAM has "
                              f"{_fmt(self.capacity_bits - others)} free of {_fmt(self.capacity_bits)}")
        self.blocks[name] = int(bits)

    def release(self, name: str) -> None:
        self.blocks.pop(name, None)
