"""Speaker authentication: binary spike trains (T=10 bins, C=140 channels), a recurrent
LIF network (as the paper's).

Scenario (the paper's): learn speakers 0–4, deploy, forget speaker 1 (random
relabelling), add speaker 5.
"""

from __future__ import annotations

from functools import partial

import snntorch
import torch
from torch import nn

from rmlora.data import speech
from rmlora.methods.train import TrainConfig
from rmlora.tasks.base import TaskDefaults


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


class SpeakerTask:
    """Speaker authentication on FSDD / SSC / procedural speech (spike-encoded)."""

    name = "speaker"
    unit = "speaker"

    def __init__(self) -> None:
        self.max_train = 200  # training utterances per speaker; ``defaults(quick=True)`` lowers it to 80

    def defaults(self, quick: bool) -> TaskDefaults:
        s = 0.3 if quick else 1.0
        self.max_train = 80 if quick else 200

        cfg = partial(TrainConfig.scaled, scale=s, batch_size=64)
        return TaskDefaults(
            learn=[0, 1, 2, 3, 4], forget=[1], add=[5], method="relabel",
            pretrain=cfg(600, 2e-3),
            unlearn_lora=cfg(150, 5e-3, eval_every=10), unlearn_full=cfg(150, 1e-3, eval_every=10),
            learn_lora=cfg(200, 5e-3, eval_every=10), learn_full=cfg(200, 1e-3, eval_every=10),
            # rehearsal: utterances per kept speaker replayed while forgetting and learning. On FSDD
            # (2 seeds) the kept speakers ended 5 test points below the deployed model with 20,
            # 2.5 with 60 and 1.0 with 100.
            rank=4, alpha=8.0, targets=None, rehearsal_per_class=100, forget_weight=1.0, seeds=1 if quick else 2,
            extra={"augment_copies": 1 if quick else 2,
                   # repair of write error and the programming-noise sweep (σ in µS, draws per level)
                   "repair": TrainConfig(steps=60 if quick else 200, lr=5e-3, batch_size=64, eval_every=10),
                   "sweep_levels": [0.0, 4.0, 8.0] if quick else [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0],
                   "sweep_draws": 3 if quick else 20})

    def load(self, data_dir: str | None, seed: int, download: bool) -> speech.SpeechSet:
        return speech.load_speech(data_dir, seed=seed, download=download)

    def split(self, ds: speech.SpeechSet, labels: list[int], seed: int) -> dict[str, speech.SpeechSet]:
        """Per speaker: 60 test and 40 validation utterances (fewer, about 1/5 and 1/6 of
        the speaker's utterances, on small sets), the rest (at most ``self.max_train``) train."""
        counts = [int(torch.unique(ds.utt_ids[ds.labels == ds.resolve(c)]).numel()) for c in labels]
        n = min(counts) if counts else 0
        n_test, n_val = min(60, max(1, n // 5)), min(40, max(1, n // 6))
        return speech.split_by_utterance(ds, labels, n_val=n_val, n_test=n_test, seed=seed, max_train=self.max_train)

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

    def build_model(self, n_classes: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return SpeakerRSNN(n_classes)
