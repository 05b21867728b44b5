"""Device parameters of a 1T1R RRAM cell, read from preset data files.

Conductances are in µS, voltages in V. Every number in a preset file names
its source (see ``presets/*.json``); :func:`load_preset` refuses a file with a
missing, non-numeric or negative constant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rmlora.errors import RmloraError, refuse_unknown
from rmlora.presetfile import check_value, load_constants, preset_path

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class DeviceParams:
    """Physics of one cell and of its write-verify programming loop.

    Weight mapping
        ``mapping`` is ``"offset"`` (one cell, w ∝ G − g_ref) or
        ``"differential"`` (two cells, w ∝ G+ − G−). Targets lie in
        ``[g_min_uS, g_max_uS]``; ``levels`` (or None) snaps them to that many
        equally spaced values.
    Programming
        ``programming`` is ``"write-verify"`` (incremental step pulse
        programming, ISPP) or ``"exact"`` (targets written exactly, for the
        ``ideal`` preset). A SET (RESET) pulse of amplitude
        V_k = v_start + k·v_step (k = pulses since the last change of
        direction, capped at v_max) moves G by
        gain·(V_k − V_th)·d2d·c2c·headroom, where headroom is the fraction
        of the physical range [g_floor, g_ceil] left in that direction, d2d a
        per-cell log-normal factor and c2c a per-pulse log-normal factor.
        Before each pulse the cell is read (with read noise); it converges
        after ``passes_required`` consecutive reads within ``tolerance_uS``
        and fails after ``max_pulses`` pulses.
    After programming
        relaxation spread σ = relax_sigma_floor + relax_sigma_iter/√reads
        + Σₖ relax_poly_cₖ·(target/relax_poly_g)ᵏ (k = 0..4: a conductance-dependent
        spread, e.g. aihwkit's fit of NeuRRAM's);
        read noise σ = read_noise_abs + read_noise_rel·G at every read;
        drift mean and spread per ln(t/t0); stuck-at-low/high fractions.
    """

    name: str
    mapping: str
    g_min_uS: float
    g_max_uS: float
    g_ref_uS: float | None
    g_floor_uS: float
    g_ceil_uS: float
    g_init_uS: float
    levels: int | None
    programming: str
    tolerance_uS: float
    max_pulses: int
    passes_required: int
    v_set_start_V: float
    v_reset_start_V: float
    v_step_V: float
    v_set_max_V: float
    v_reset_max_V: float
    v_set_threshold_V: float
    v_reset_threshold_V: float
    set_gain_uS_per_V: float
    reset_gain_uS_per_V: float
    c2c_sigma: float
    d2d_sigma: float
    read_noise_abs_uS: float
    read_noise_rel: float
    relax_sigma_floor_uS: float
    relax_sigma_iter_uS: float
    relax_poly_c0_uS: float
    relax_poly_c1_uS: float
    relax_poly_c2_uS: float
    relax_poly_c3_uS: float
    relax_poly_c4_uS: float
    relax_poly_g_uS: float
    drift_mean_uS_per_ln_t: float
    drift_sigma_uS_per_ln_t: float
    drift_t0_s: float
    stuck_low_fraction: float
    stuck_high_fraction: float

    @property
    def cells_per_weight(self) -> int:
        return 2 if self.mapping == "differential" else 1

    @property
    def reference_uS(self) -> float:
        """Conductance that encodes weight zero (offset mapping)."""
        if self.g_ref_uS is not None:
            return self.g_ref_uS
        return 0.5 * (self.g_min_uS + self.g_max_uS)

    @property
    def relax_poly(self) -> tuple[float, float, float, float, float]:
        """Coefficients c0..c4 (µS) of the conductance-dependent relaxation spread."""
        return (self.relax_poly_c0_uS, self.relax_poly_c1_uS, self.relax_poly_c2_uS, self.relax_poly_c3_uS,
                self.relax_poly_c4_uS)

    def relax_sigma(self, target_uS: Any, reads: Any = 1) -> Any:
        """Relaxation spread σ (µS) right after programming to ``target_uS`` with ``reads`` verify reads."""
        u = target_uS / self.relax_poly_g_uS
        poly = sum(c * u ** k for k, c in enumerate(self.relax_poly))
        return self.relax_sigma_floor_uS + self.relax_sigma_iter_uS / (reads ** 0.5) + poly

    @property
    def noiseless(self) -> bool:
        return (self.read_noise_abs_uS == 0 and self.read_noise_rel == 0
                and self.relax_sigma_floor_uS == 0 and self.relax_sigma_iter_uS == 0
                and not any(self.relax_poly))

    def replace(self, **changes: Any) -> "DeviceParams":
        """A copy with some constants changed (validated like a file)."""
        d = asdict(self)
        where = f"preset {self.name} (modified)"
        refuse_unknown(changes, _TYPES, where, "device constant")
        d.update({k: _checked(k, v, where) for k, v in changes.items()})
        return _validated(DeviceParams(**d), where)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TYPES: dict[str, type] = {
    f: (int if f in ("max_pulses", "passes_required", "levels") else
        str if f in ("mapping", "programming") else float)
    for f in DeviceParams.__dataclass_fields__ if f != "name"
}
_NULLABLE = frozenset({"g_ref_uS", "levels"})
_SIGNED = frozenset(f"relax_poly_c{k}_uS" for k in range(5))
#: divisors: drift is a function of ln(t / drift_t0_s), the relaxation polynomial of g / relax_poly_g_uS
_POSITIVE = frozenset({"drift_t0_s", "relax_poly_g_uS"})


def _checked(key: str, value: Any, where: str) -> Any:
    return check_value(key, value, _TYPES[key], where, nullable=key in _NULLABLE, signed=key in _SIGNED,
                       positive=key in _POSITIVE)


def _validated(p: DeviceParams, where: str) -> DeviceParams:
    if p.mapping not in ("offset", "differential"):
        raise RmloraError(f"{where}: mapping must be 'offset' or 'differential', got {p.mapping!r}")
    if p.programming not in ("write-verify", "exact"):
        raise RmloraError(f"{where}: programming must be 'write-verify' or 'exact', got {p.programming!r}")
    if not p.g_floor_uS <= p.g_min_uS < p.g_max_uS <= p.g_ceil_uS:
        raise RmloraError(f"{where}: need g_floor <= g_min < g_max <= g_ceil (µS)")
    if p.g_ref_uS is not None and not p.g_min_uS < p.g_ref_uS < p.g_max_uS:
        raise RmloraError(f"{where}: g_ref_uS must lie inside (g_min, g_max)")
    if p.levels is not None and p.levels < 2:
        raise RmloraError(f"{where}: levels must be >= 2 or null")
    if p.programming == "write-verify":
        if p.max_pulses < 1 or p.passes_required < 1:
            raise RmloraError(f"{where}: max_pulses and passes_required must be >= 1")
        if p.v_set_start_V <= p.v_set_threshold_V or p.v_reset_start_V <= p.v_reset_threshold_V:
            raise RmloraError(f"{where}: start voltages must exceed the switching thresholds")
        if p.max_pulses + p.passes_required > 32767:
            raise RmloraError(f"{where}: max_pulses + passes_required must stay below 32768 (int16 records)")
    if p.c2c_sigma > 2:
        raise RmloraError(f"{where}: c2c_sigma must be <= 2 (a per-pulse spread beyond e^2 is outside the "
                          f"programming kernel's range), got {p.c2c_sigma}")
    if p.stuck_low_fraction + p.stuck_high_fraction > 1:
        raise RmloraError(f"{where}: stuck-at fractions add up to more than 1")
    if any(p.relax_poly):  # the spread must stay positive over the whole window
        g = [p.g_min_uS + (p.g_max_uS - p.g_min_uS) * i / 400 for i in range(401)]
        low = min(g, key=lambda v: p.relax_sigma(v, 10 ** 9))
        if p.relax_sigma(low, 10 ** 9) <= 0:
            raise RmloraError(f"{where}: the relaxation spread σ(g) is not positive at g = {low:.2f} uS")
    return p


def load_preset(name_or_path: str) -> DeviceParams:
    """Load a built-in preset (``rram-180nm``, ``ideal``, ...) or a JSON file."""
    path = preset_path(PRESET_DIR, name_or_path, "device preset")
    values, doc = load_constants(path, _TYPES, "device preset", may_be_null=_NULLABLE, signed=_SIGNED,
                                 positive=_POSITIVE)
    return _validated(DeviceParams(name=doc.get("name", path.stem), **values), f"device preset {path}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))
