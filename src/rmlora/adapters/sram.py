"""SRAM capacity of the digital unit: adapters and digital rows must fit."""

from __future__ import annotations

from rmlora.errors import RmloraError


def _fmt(bits: int) -> str:
    return f"{bits} bits ({bits / 8 / 1024:.1f} KiB)"


class SramBuffer:
    """Allocations by name of a buffer of ``capacity_bits``."""

    def __init__(self, capacity_bits: int) -> None:
        self.capacity_bits = int(capacity_bits)
        self.blocks: dict[str, int] = {}

    @property
    def used_bits(self) -> int:
        return sum(self.blocks.values())

    @property
    def free_bits(self) -> int:
        return self.capacity_bits - self.used_bits

    def allocate(self, name: str, bits: int) -> None:
        """Reserve ``bits`` for ``name`` (replacing an earlier block of that name) or refuse."""
        others = self.used_bits - self.blocks.get(name, 0)
        if others + bits > self.capacity_bits:
            raise RmloraError(f"adapter {name!r} needs {_fmt(bits)} but the SRAM has "
                              f"{_fmt(self.capacity_bits - others)} free of {_fmt(self.capacity_bits)}")
        self.blocks[name] = int(bits)

    def release(self, name: str) -> None:
        self.blocks.pop(name, None)
