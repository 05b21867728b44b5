"""The paper's three architectures at the paper's sizes, for cost projections.

Sizes, adapter placement and schedules come from the authors' code
(github.com/MrLinNing/RMAdaptiveMachine, DESIGN §8); what that code does not
fix is marked as an assumption. ``rmlora costs --model NAME`` projects each
with :func:`rmlora.costs.project.project`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from rmlora.config import AdapterConfig
from rmlora.costs.project import Schedule
from rmlora.errors import RmloraError


@dataclass
class PaperModel:
    """One named model: how to build it with an example batch, its adapter, its schedule."""

    name: str
    description: str
    build: Callable[[int], tuple[nn.Module, Any]]  # batch -> (model, example batch)
    adapter: AdapterConfig
    schedule: Schedule
    source: str
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    exclude: tuple[str, ...] = ()
    count_batch: int | None = None  # samples to count (then scaled to the schedule's batch); None: all
    notes: list[str] = field(default_factory=list)


def _face(batch: int) -> tuple[nn.Module, Any]:
    from rmlora.tasks.face import FaceMixer

    torch.manual_seed(0)
    return FaceMixer(5, size=16, patch=4, channels=20, hidden=32, layers=2), torch.rand(batch, 1, 16, 16)


def _speaker(batch: int) -> tuple[nn.Module, Any]:
    from rmlora.tasks.speaker import SpeakerRSNN

    torch.manual_seed(0)
    spikes = (torch.rand(batch, 10, 140, generator=torch.Generator().manual_seed(1)) < SPIKE_DENSITY).float()
    return SpeakerRSNN(5, n_in=140, hidden=512), spikes


#: share of active channel-bins in the example spike trains: measured on rmlora's FSDD encoding
#: (``load_fsdd(...).spikes.mean()`` = 0.50); the cost of spikes depends on it (events)
SPIKE_DENSITY = 0.5


def _image(batch: int) -> tuple[nn.Module, Any]:
    from rmlora.tasks.style import paper_model as dit, style_settings

    torch.manual_seed(0)
    st = style_settings("paper", device="cpu")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, st.model_channels, st.model_size, st.model_size, generator=gen)  # 16x16x4 latents
    return dit(), (x0, torch.randint(0, 30, (batch,), generator=gen))


def _denoise(model: nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The workload's own diffusion loss (noise, a time step, the noisy latents, the prediction)."""
    from rmlora.tasks.style import style_settings
    from rmlora.tasks.style_pipeline import StyleDiffusion

    x0, labels = example
    return StyleDiffusion(style_settings("paper", device="cpu"), null_label=30).loss(
        model, x0, labels, torch.Generator().manual_seed(1))


def _classify(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = model(x)
    return nn.functional.cross_entropy(y, torch.zeros(y.shape[0], dtype=torch.long))


PAPER_MODELS: dict[str, PaperModel] = {
    "face-mixer": PaperModel(
        "face-mixer", "MLP-Mixer, 2 layers, 20 channels, 32 hidden, patch 4, 16x16 input, 5 identities",
        _face, AdapterConfig(rank=6, alpha=4.0, target_modules=["*channel_fc*", "head"]),
        Schedule(steps=16, full_steps=200, batch=40, requests=1),
        "authors' FaceRecognition/main_mixer_unlearn.py (rank 6, alpha 4 on ChannelMixingMLP and OutputMLP; "
        "16 full-batch epochs) and run_baseline_unlearn.sh (the full update: 200 epochs); 40 training photos = "
        "80% of 5 x 10 (test_size 0.2)",
        _classify, notes=["the authors' full update trains 12.5x more epochs than their LoRA path"]),
    "speaker-lif": PaperModel(
        "speaker-lif", "recurrent LIF network 140 -> 512 (+512x512 recurrence) -> 5 speakers, 10 time bins",
        _speaker, AdapterConfig(rank=8, alpha=16.0, target_modules=["fc_in", "rec"]),
        Schedule(steps=960, batch=128, requests=1),
        "authors' SpeakerAuthentication/train_randlabel_lora.sh and _full.sh: rank 8, alpha 16 on the input and "
        "recurrent layers, 60 epochs, batch 128 on both paths; 16 batches per epoch is an assumption (the five "
        "most frequent SSC speakers' ~2,000 training utterances)",
        _classify, notes=[f"example spikes: {SPIKE_DENSITY:.0%} of channel-bins active (rmlora's FSDD encoding)"]),
    "dit-b2-convnext": PaperModel(
        "dit-b2-convnext", "ConvNeXt-block DiT-B/2 (depth 12, hidden 768, patch 2, 7x7 depthwise convolutions in "
        "place of attention) on 16x16x4 latents of 128 px images, 30 style x animal classes",
        _image, AdapterConfig(rank=4, alpha=8.0, target_modules=["*ff.net*"]),
        Schedule(steps=100_000, batch=16, requests=1),
        "authors' ImageGeneration/train_task2.sh (DiT-B/2 --convnext, LoRA rank 4 on the MLP layers, global batch "
        "16, the checkpoint at step 100,000, 30 classes at 128 px) and DESIGN s8; the same steps for the full "
        "update (the authors' code has no full-update run of the image task)",
        _denoise, count_batch=2, notes=["the VAE is digital and outside the comparison; the model's every Linear and Conv2d "
                         "(the depthwise convolutions included) sits in the arrays"]),
}


def paper_model(name: str) -> PaperModel:
    if name not in PAPER_MODELS:
        raise RmloraError(f"unknown model {name!r}; known: {', '.join(sorted(PAPER_MODELS))}")
    return PAPER_MODELS[name]
