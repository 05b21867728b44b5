"""Retention: the deployed chip's score as its conductances drift, with and without a repair adapter.

For each of ``settings.retention_chips`` fresh chips, the pretrained float
model is deployed (converters calibrated as in the run) and its cells are
aged from the programmed state to each time of :data:`TIMES` with the
preset's drift model (:func:`rmlora.device.physics.relax_drift`: mean
−μ·ln(t/t0), spread σ·ln(t/t0), both µS, cited in the preset). As in
aihwkit's inference noise models, each time is drawn afresh from the
programmed state. Then a digital repair adapter is trained on the chip aged
1 h (the workload's repair objective on the kept classes, the ``learn_lora``
budget) and the chip with the adapter is scored at every time from 1 h on.
The score is the workload's :meth:`retention_metric` (test accuracy of the
kept classes; the style workload's validation denoising loss).
"""

from __future__ import annotations

from typing import Any

from rmlora.hardware import analog_layers, deploy
from rmlora.methods import fit
from rmlora.methods.paths import AdapterPath

#: time after programming (s) of each retention point
TIMES = {"1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 week": 604800.0, "1 month": 2.592e6, "1 year": 3.1536e7}
REPAIR_AT = "1 h"


def _age(model, chip, state: dict, seconds: float | None = None) -> None:
    """Put ``chip`` back into ``state``, let it drift ``seconds`` (None: not at all), re-read the cells."""
    chip.load_state_dict(state)
    if seconds is not None:
        chip.age(seconds)
    for _, m in analog_layers(model):
        m.core.refresh()


def retention(run: Any, float_state: dict, columns: list, state: Any) -> dict[str, Any]:
    """Scores at :data:`TIMES` on ``settings.retention_chips`` chips, before and after a repair
    adapter trained at :data:`REPAIR_AT`; {} when the setting is 0."""
    w, st, plan = run.w, run.st, run.plan
    n_chips = getattr(st, "retention_chips", 0)
    if n_chips <= 0:
        return {}
    name = None
    plain: dict[str, list[float]] = {t: [] for t in TIMES}
    repaired: dict[str, list[float]] = {t: [] for t in TIMES if TIMES[t] >= TIMES[REPAIR_AT]}
    for k in range(n_chips):
        model = run.build(len(columns), "model:retention")
        model.load_state_dict(float_state)
        for p in model.parameters():
            p.requires_grad_(False)
        chip = run.chip(f"chip:retention:{k}")
        deploy(model, chip, exclude=w.deploy_exclude(st), profile=plan.profile,
               calibrate=w.calibration(run.data, state.kept, columns, st))
        programmed = {key: v.clone() for key, v in chip.state_dict().items()}
        for t, sec in TIMES.items():
            _age(model, chip, programmed, sec)
            name, value = w.retention_metric(model, run.data, state, columns)
            plain[t].append(value)
        _age(model, chip, programmed, TIMES[REPAIR_AT])
        at_repair = {key: v.clone() for key, v in chip.state_dict().items()}
        path = AdapterPath(model, chip, plan.profile, plan.adapter)
        with run.streams.global_rng(f"init:retention:{k}"):
            params = path.begin("repair")
        obj = w.objective("learn", model, run.data, forget=[], new=[], state=state, columns=columns, settings=st,
                          method=plan.method, gen=run.streams.generator(f"batches:retention:{k}"),
                          seed=run.streams.seed(f"validation:retention:{k}") % 2 ** 31)
        fit(model, [{"params": params}], obj.loss, st.learn_lora, score_fn=obj.score,
            desc=f"retention chip {k}: repair at {REPAIR_AT}", progress=run.progress)
        model.eval()
        for t in repaired:
            if t == REPAIR_AT:  # the very chip the adapter was trained on
                _age(model, chip, at_repair)
            else:
                _age(model, chip, programmed, TIMES[t])
            repaired[t].append(w.retention_metric(model, run.data, state, columns)[1])
    return {"metric": name, "chips": n_chips, "times_s": TIMES, "repair_at": REPAIR_AT,
            "drift": {"preset": plan.chip.preset}, "plain": plain, "repaired": repaired}

