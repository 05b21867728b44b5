"""Speaker authentication: binary spike trains (T=10 bins, C=140 channels), a recurrent
LIF network (as the paper's).

Scenario (the paper's): learn speakers 0–4, deploy, forget speaker 1 (random
relabelling), add speaker 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import snntorch
import torch
from torch import nn

from rmlora.config import AdapterConfig, TrainConfig
from rmlora.data import speech
from rmlora.scenario.classification import AuditConfig, ClassificationWorkload, ClassifierSettings


class SpeakerRSNN(nn.Module):
    """Recurrent LIF network for (B, T, C) binary spikes: ``C`` → ``hidden`` (with a
    ``hidden`` x ``hidden`` recurrence) → ``n_classes`` (paper: 140 → 512 → classes).

    Hidden layer, time step t (snntorch ``Leaky``, reset by subtraction)::

        mem_t = beta·mem_{t-1} + fc_in(x_t) + rec(s_{t-1}) − threshold·reset_{t-1}
        s_t   = H(mem_t − threshold)          (fast-sigmoid surrogate gradient)

    Readout: logits = Σ_t head(s_t). Every synaptic matrix (``fc_in``, ``rec``, ``head``)
    is a plain ``nn.Linear`` child, so :func:`rmlora.hardware.deploy` maps each onto tiles;
    ``rec`` and ``head`` only ever see binary spikes and ``fc_in`` the binary input, so
    the event-driven cost ledger counts spikes. ``rec`` is skipped at t=0 (no spikes
    yet: no events, no work).
    """

    def __init__(self, n_classes: int, n_in: int = 140, hidden: int = 512, beta: float = 0.9,
                 threshold: float = 1.0, slope: float = 10.0) -> None:
        super().__init__()
        self.fc_in = nn.Linear(n_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)  # fc_in carries the bias
        self.lif = snntorch.Leaky(beta=beta, threshold=threshold, learn_beta=False, reset_mechanism="subtract",
                                  spike_grad=snntorch.surrogate.fast_sigmoid(slope=slope))
        self.head = nn.Linear(hidden, n_classes)
        with torch.no_grad():  # recurrence starts weak so that early activity is driven by the input
            self.rec.weight.mul_(0.5)

    def hidden_spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden spikes (B, T, hidden) for input spikes ``x`` (B, T, C)."""
        if x.dim() != 3:
            raise ValueError(f"SpeakerRSNN expects (B, T, C) spikes, got shape {tuple(x.shape)}")
        cur = self.fc_in(x)  # (B, T, hidden): one MVM per input spike vector, all time bins at once
        mem = torch.zeros_like(cur[:, 0])
        spk = None
        out = []
        try:
            for t in range(x.shape[1]):
                i_t = cur[:, t] if spk is None else cur[:, t] + self.rec(spk)
                spk, mem = self.lif(i_t, mem)
                out.append(spk)
        finally:
            # the neuron keeps its last state on the module; drop it so that the model
            # holds no autograd graph between calls (deepcopy and state_dict stay clean)
            self.lif.mem = torch.zeros(0, device=cur.device)
            self.lif.reset = None
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_spikes(x)).sum(dim=1)


def _augment_spikes(x: torch.Tensor, generator: torch.Generator, drop: float = 0.1,
                    max_shift: int = 1) -> torch.Tensor:
    """One augmented copy of binary spikes (N, T, C): each spike dropped with prob. ``drop``,
    then each utterance shifted by a random −max_shift..max_shift time bins (zero fill)."""
    keep = torch.rand(x.shape, generator=generator) >= drop
    y = x * keep
    shift = torch.randint(-max_shift, max_shift + 1, (x.shape[0],), generator=generator)
    out = torch.zeros_like(y)
    T = x.shape[1]
    for s in shift.unique().tolist():
        rows = (shift == s).nonzero().squeeze(1)
        if s >= 0:
            out[rows, s:] = y[rows, :T - s]
        else:
            out[rows, :T + s] = y[rows, -s:]
    return out


#: the evaluation's pretraining (steps, Adam learning rate): the validation search's choice
#: (benchmarks/tune_unlearning.py --workload speaker --what pretrain; docs/tuning_speaker.json)
EVAL_PRETRAIN = (600, 2e-3)  # 1200 steps scored within the tie tolerance
#: forget learning rate per method, [adapter path, full update]: the validation search's choice
#: (benchmarks/tune_unlearning.py --workload speaker; docs/tuning_speaker.json)
EVAL_LR: dict[str, list[float]] = {
    "ft": [0.015, 0.001],
    "neggrad": [0.00167, 0.000333],
    "neggrad+": [0.00167, 0.001],
    "relabel": [0.00167, 0.000333],
    "scrub": [0.015, 0.003],
    "l1": [0.015, 0.001],
    "salun": [0.005, 0.000333],
}


@dataclass
class SpeakerSettings(ClassifierSettings):
    """Speaker settings: training utterances per speaker, the write-error repair experiment."""

    max_train: int = field(default=200, metadata={"help": "training utterances per speaker (at most)"})
    repair: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the repair adapter's training"})
    sweep_levels: list[float] = field(default_factory=list,
                                      metadata={"help": "programming-noise σ of the sweep (µS); empty: no sweep"})
    sweep_draws: int = field(default=20, metadata={"help": "chips per sweep level"})


class SpeakerWorkload(ClassificationWorkload):
    """Speaker authentication on FSDD / SSC / procedural speech (spike-encoded)."""

    name = "speaker"
    unit = "speaker"
    description = "speaker authentication: FSDD/SSC as 140-channel spikes, a recurrent LIF network 140-512-classes"
    settings_type = SpeakerSettings
    configurations = ("default", "quick", "eval", "eval-quick")

    def settings(self, configuration: str) -> SpeakerSettings:
        """The defaults; ``quick`` shortens every stage to 30 % and trains on 80 utterances per speaker.
        ``eval`` is the unlearning evaluation's protocol (:meth:`eval_settings`)."""
        if configuration.startswith("eval"):
            return self.eval_settings(configuration == "eval-quick")
        quick = configuration == "quick"
        cfg = partial(TrainConfig.scaled, scale=0.3 if quick else 1.0, batch_size=64)
        return SpeakerSettings(
            learn=["0", "1", "2", "3", "4"], forget=["1"], add=["5"], method="relabel",
            pretrain=cfg(600, 2e-3),
            forget_lora=cfg(150, 5e-3, eval_every=10), forget_full=cfg(150, 1e-3, eval_every=10),
            learn_lora=cfg(200, 5e-3, eval_every=10), learn_full=cfg(200, 1e-3, eval_every=10), rows_lr=5e-3,
            adapter=AdapterConfig(rank=4, alpha=8.0, target_modules=None),
            # rehearsal: utterances per kept speaker replayed while learning a new one. Chosen on validation data
            # (the add request's validation score on both paths, 20 / 60 / 100: benchmarks/tune_unlearning.py
            # --workload speaker --what default; docs/tuning_speaker.json)
            rehearsal_per_class=100, forget_weight=1.0, seeds=1 if quick else 2,
            augment_copies=1 if quick else 2, max_train=80 if quick else 200,
            repair=TrainConfig(steps=60 if quick else 200, lr=5e-3, batch_size=64, eval_every=10),
            # the attacker's relearning adapter learns at the adapter path's forget rate (not tuned)
            audit=AuditConfig(relearn_lr=5e-3),
            sweep_levels=[0.0, 4.0, 8.0] if quick else [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0],
            sweep_draws=3 if quick else 20)

    def eval_settings(self, quick: bool) -> SpeakerSettings:
        """The unlearning evaluation (docs/evaluation.md): all six FSDD speakers learned, jackson
        (index 1, the default scenario's) forgotten, one fixed split (split seed 0: the other seeds'
        models are the likelihood-ratio attack's shadow models), 10 seeds (``eval-quick``: 3 seeds,
        30 % budgets). Step budgets are compute budgets shared by every method and both paths (the
        recurrent network costs about ten times the face model per step on the simulated chip); the
        pretraining budget and the learning rates come from the validation search
        (``benchmarks/tune_unlearning.py --workload speaker``; docs/tuning_speaker.json)."""
        base = self.settings("default")
        cfg = partial(TrainConfig.scaled, scale=0.3 if quick else 1.0, batch_size=16)
        return base.replace(
            learn=["all"], forget=["1"], add=[], seeds=3 if quick else 10, split_seed=0, retention_chips=0,
            sweep_levels=[], max_train=80 if quick else 200, augment_copies=1 if quick else 2,
            pretrain=TrainConfig.scaled(EVAL_PRETRAIN[0], EVAL_PRETRAIN[1], scale=0.3 if quick else 1.0,
                                        batch_size=64),
            forget_lora=cfg(30, 5e-3, eval_every=10), forget_full=cfg(30, 1e-3, eval_every=10),
            method_lr=dict(EVAL_LR),
            # the attacker's relearning budget: 12 steps of 8 forgotten + 8 kept utterances (a budget, not tuned)
            audit=AuditConfig(relearn_max_steps=10 if quick else 12, relearn_every=3, relearn_lr=5e-3,
                              relearn_batch=8))

    def load(self, data_dir: str | None, seed: int, download: bool) -> speech.SpeechSet:
        return speech.load_speech(data_dir, seed=seed, download=download)

    def split(self, ds: speech.SpeechSet, labels: list[int], seed: int, settings: SpeakerSettings
              ) -> dict[str, speech.SpeechSet]:
        """Per speaker: 60 test and 40 validation utterances (fewer, about 1/5 and 1/6 of
        the speaker's utterances, on small sets), the rest (at most ``max_train``) train."""
        counts = [int(torch.unique(ds.utt_ids[ds.labels == ds.resolve(c)]).numel()) for c in labels]
        n = min(counts) if counts else 0
        n_test, n_val = min(60, max(1, n // 5)), min(40, max(1, n // 6))
        return speech.split_by_utterance(ds, labels, n_val=n_val, n_test=n_test, seed=seed,
                                         max_train=settings.max_train)

    def inputs(self, ds: speech.SpeechSet) -> torch.Tensor:
        return ds.spikes

    def augment(self, ds: speech.SpeechSet, generator: torch.Generator, copies: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The utterances plus ``copies`` augmented copies (spike dropout, ±1 bin shift)."""
        xs, ys = [ds.spikes], [ds.labels]
        for _ in range(max(0, copies)):
            xs.append(_augment_spikes(ds.spikes, generator))
            ys.append(ds.labels)
        return torch.cat(xs), torch.cat(ys)

    def build_model(self, n_columns: int, settings: SpeakerSettings) -> nn.Module:
        """The RSNN, initialised from torch's global generator (the runner seeds it)."""
        return SpeakerRSNN(n_columns)

    # -- the paper's write-noise figure ---------------------------------------
    def extras(self, ctx: Any) -> dict[str, Any]:
        """Write error and its digital repair (first seed): the programming-noise sweep, then a
        repair adapter on the preset's chip and on the first swept level that costs ≥ 5 points."""
        from rmlora.device import load_preset
        from rmlora.methods.repair import noise_sweep, plot_sweep, repair_experiment

        st: SpeakerSettings = ctx.settings
        if not st.sweep_levels or ctx.out is None:
            return {}
        learn, data = ctx.state.initial, ctx.data
        test, val, train = (data.xy(s, learn, learn) for s in ("test", "val", "train"))
        build = ctx.build_float
        sweep = noise_sweep(build(), test, st.sweep_levels, st.sweep_draws, seed=ctx.seed, calibration=train[0])
        other = noise_sweep(ctx.pretrain_float(not ctx.hardware_aware), test, st.sweep_levels, st.sweep_draws,
                            seed=ctx.seed, calibration=train[0])
        plain, hwa = (other, sweep) if ctx.hardware_aware else (sweep, other)
        plot_sweep({"plain pretraining": plain, f"hardware-aware ({ctx.chip_config.preset} noise)": hwa},
                   ctx.out / "noise_sweep.png", f"accuracy vs programming noise ({sweep['draws']} chips per level)")
        a = ctx.adapter
        res = repair_experiment(build(), build, ctx.chip_config.preset, train, val, test, st.repair, ctx.seed,
                                a.rank, a.alpha)
        lost = [lvl for lvl, m in zip(sweep["levels_uS"], sweep["mean"]) if m <= sweep["mean"][0] - 0.05]
        sigma = lost[0] if lost else sweep["levels_uS"][-1]
        stress_dev = load_preset("ideal").replace(relax_sigma_floor_uS=float(sigma), relax_sigma_iter_uS=0.0)
        stress = repair_experiment(build(), build, stress_dev, train, val, test, st.repair, ctx.seed, a.rank, a.alpha)
        keys = ("acc_before_noise", "acc_after_noise", "acc_after_repair", "recovered_fraction")
        return {"repair": {**{k: res[k] for k in keys}, "preset": ctx.chip_config.preset,
                           "stress": {"sigma_uS": sigma, **{k: stress[k] for k in keys}},
                           "sweep": {k: plain[k] for k in ("levels_uS", "mean", "std", "draws")},
                           "sweep_hardware_aware": {k: hwa[k] for k in ("levels_uS", "mean", "std", "draws")},
                           "hardware_aware_run": ctx.hardware_aware}}

    def report_section(self, result: Any, out: Any) -> str:
        from rmlora.scenario.report import repair_section

        return repair_section(result.per_seed[0].extras.get("repair"))
