"""Face recognition: 16x16 greyscale photos, a small MLP-Mixer (as the paper's).

Scenario (the paper's): learn identities 0–4, deploy, forget identity 2,
add identity 5.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from rmlora.config import AdapterConfig, TrainConfig
from rmlora.data import faces
from rmlora.scenario.classification import AuditConfig, ClassificationWorkload, ClassifierSettings


class MixerBlock(nn.Module):
    """Token mixing (across patches) then channel mixing, each a 2-layer MLP with a residual."""

    def __init__(self, tokens: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token_fc1 = nn.Linear(tokens, hidden)
        self.token_fc2 = nn.Linear(hidden, tokens)
        self.norm2 = nn.LayerNorm(channels)
        self.channel_fc1 = nn.Linear(channels, hidden)
        self.channel_fc2 = nn.Linear(hidden, channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, tokens, channels)
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_fc2(self.act(self.token_fc1(y))).transpose(1, 2)
        return x + self.channel_fc2(self.act(self.channel_fc1(self.norm2(x))))


class FaceMixer(nn.Module):
    """MLP-Mixer for (B, 1, S, S) images: patches of ``patch`` pixels, ``layers`` blocks of
    ``channels`` channels and ``hidden`` hidden units (paper: 2, 20, 32, patch 4, S=16).

    Written out (about 30 lines) rather than taken from timm so that every matrix
    is a plain ``nn.Linear`` with a stable name for tile mapping and adapters.
    """

    def __init__(self, n_classes: int, size: int = 16, patch: int = 4, channels: int = 20, hidden: int = 32,
                 layers: int = 2) -> None:
        super().__init__()
        self.patch = patch
        tokens = (size // patch) ** 2
        self.embed = nn.Linear(patch * patch, channels)
        self.blocks = nn.Sequential(*[MixerBlock(tokens, channels, hidden) for _ in range(layers)])
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        x = self.blocks(self.embed(x))
        return self.head(self.norm(x).mean(dim=1))


#: the evaluation's pretraining (steps, Adam learning rate): the validation search's choice
#: (benchmarks/tune_unlearning.py --workload face --what pretrain; docs/tuning_face.json)
EVAL_PRETRAIN = (800, 1e-2)
#: forget learning rate per method, [adapter path, full update]: the validation search's choice
#: (benchmarks/tune_unlearning.py --workload face; docs/tuning_face.json)
EVAL_LR: dict[str, list[float]] = {
    "ft": [0.03, 0.006],
    "neggrad": [0.00333, 0.000667],
    "neggrad+": [0.01, 0.002],
    "relabel": [0.01, 0.000667],
    "scrub": [0.01, 0.006],
    "l1": [0.03, 0.006],
    "salun": [0.01, 0.000667],
}


class FaceWorkload(ClassificationWorkload):
    """Face recognition on AT&T / Olivetti / a photo folder / procedural faces."""

    name = "face"
    unit = "identity"
    description = "face recognition: AT&T/Olivetti photos (16x16), a 2-block MLP-Mixer"
    settings_type = ClassifierSettings
    configurations = ("default", "quick", "eval", "eval-quick")

    def settings(self, configuration: str) -> ClassifierSettings:
        """The defaults; ``quick`` shortens every stage to 30 %. Budgets and learning rates were
        chosen on validation accuracy of the procedural faces and of AT&T's validation photos.
        ``eval`` is the unlearning evaluation's protocol (:meth:`eval_settings`)."""
        if configuration.startswith("eval"):
            return self.eval_settings(configuration == "eval-quick")
        quick = configuration == "quick"
        cfg = partial(TrainConfig.scaled, scale=0.3 if quick else 1.0, batch_size=32)
        return ClassifierSettings(
            learn=["0", "1", "2", "3", "4"], forget=["2"], add=["5"], method="ga",
            pretrain=cfg(800, 5e-3),
            forget_lora=cfg(200, 1e-2, eval_every=10), forget_full=cfg(200, 2e-3, eval_every=10),
            learn_lora=cfg(300, 1e-2, eval_every=10), learn_full=cfg(300, 2e-3, eval_every=10), rows_lr=1e-2,
            adapter=AdapterConfig(rank=4, alpha=8.0, target_modules=["*channel_fc*", "head"]),
            rehearsal_per_class=3, forget_weight=1.0, seeds=1 if quick else 5,
            augment_copies=4 if quick else 10,
            # gradient ascent stops pushing a forget photo once its loss exceeds ga_cap (nats). Chosen on
            # validation data (benchmarks/tune_unlearning.py --workload face --what default; docs/tuning_face.json):
            # caps 1, 2 and 4 tie on both paths, and ties go to the gentlest
            ga_cap=1.0)

    def eval_settings(self, quick: bool) -> ClassifierSettings:
        """The unlearning evaluation (docs/evaluation.md): every identity learned, s3 (index 2, the
        paper's forgotten identity) forgotten, one fixed split (split seed 0) so that the other seeds'
        models are the likelihood-ratio attack's shadow models, 10 seeds (``eval-quick``: 3 seeds,
        30 % budgets, for a first look and the tests).

        The step budgets are compute budgets (every method and both paths get the same); inside them
        the checkpoint is picked on validation data. The pretraining budget and every method's
        learning rate on each path come from the validation search of
        ``benchmarks/tune_unlearning.py`` (docs/tuning_face.json); method constants are published
        defaults (:class:`rmlora.methods.UnlearnConfig`)."""
        base = self.settings("default")
        cfg = partial(TrainConfig.scaled, scale=0.3 if quick else 1.0, batch_size=16)
        return base.replace(
            learn=["all"], forget=["2"], add=[], seeds=3 if quick else 10, split_seed=0, retention_chips=0,
            augment_copies=4 if quick else 10,
            pretrain=TrainConfig.scaled(EVAL_PRETRAIN[0], EVAL_PRETRAIN[1], scale=0.3 if quick else 1.0, batch_size=32),
            forget_lora=cfg(60, 1e-2, eval_every=10), forget_full=cfg(60, 2e-3, eval_every=10),
            method_lr=dict(EVAL_LR),
            # the attacker's relearning budget: 30 steps of 8 forgotten + 8 kept photos (a budget, not tuned)
            audit=AuditConfig(relearn_max_steps=9 if quick else 30, relearn_every=3, relearn_lr=1e-2,
                              relearn_batch=8))

    def load(self, data_dir: str | None, seed: int, download: bool) -> faces.FaceSet:
        return faces.load_faces(data_dir, size=16, seed=seed, download=download)

    def split(self, ds: faces.FaceSet, labels: list[int], seed: int, settings: ClassifierSettings
              ) -> dict[str, faces.FaceSet]:
        return faces.split_by_photo(ds, labels, n_val=2, n_test=2, seed=seed)

    def inputs(self, ds: faces.FaceSet) -> torch.Tensor:
        return ds.images

    def augment(self, ds: faces.FaceSet, generator: torch.Generator, copies: int = 10
                ) -> tuple[torch.Tensor, torch.Tensor]:
        aug = faces.augment_set(ds, copies, generator)
        return torch.cat([ds.images, aug.images]), torch.cat([ds.labels, aug.labels])

    def build_model(self, n_columns: int, settings: ClassifierSettings) -> nn.Module:
        """The Mixer, initialised from torch's global generator (the runner seeds it)."""
        return FaceMixer(n_columns)
