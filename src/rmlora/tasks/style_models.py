"""The style workload's networks (diffusers' split: the models here, the diffusion pipeline in
:mod:`rmlora.tasks.style_pipeline`, the scenario in :mod:`rmlora.tasks.style_workload`).

* :class:`ConvNeXtDiT` — the paper's image model (the authors' DiT with ``--convnext``): DiT's
  adaLN-Zero conditioning, but each block's self-attention replaced by a 7x7 depthwise
  convolution over the token grid, so every multiply has a fixed weight the arrays can hold.
  Built from diffusers' pieces: :class:`~diffusers.models.embeddings.PatchEmbed` (patch
  convolution and fixed sin-cos positions), :class:`~diffusers.models.embeddings.CombinedTimestepLabelEmbeddings`
  (sinusoidal time step → MLP, plus the class table with its null row), one
  :class:`~diffusers.models.normalization.AdaLayerNormZero` per block on the shared conditioning,
  :class:`~diffusers.models.attention.FeedForward` (GELU-tanh MLP, ratio 4) and DiT's
  final modulated projection;
* the attention DiT, :class:`diffusers.DiTTransformer2DModel`, kept as the ``attention`` option;
* the class-embedding rows of new classes, trained as digital parameters
  (:class:`DigitalEmbeddingRows`);
* :func:`build_vae` — a small :class:`diffusers.AutoencoderKL` for latent configurations.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmlora.errors import RmloraError

#: the block types :func:`build_model` knows
BLOCKS = ("convnext", "attention")


def _diffusers_model_base() -> tuple[type, type, Any]:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin

    return ModelMixin, ConfigMixin, register_to_config


_ModelMixin, _ConfigMixin, _register = _diffusers_model_base()


class ConvNeXtDiTBlock(nn.Module):
    """x + gate₁·DWConv₇ₓ₇(modulate(LN(x))) then x + gate₂·MLP(modulate(LN(x))): the authors'
    ``ConvNeXtDiTBlock`` on diffusers parts. Tokens (B, T, D) on an (h, w) grid."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: int = 4) -> None:
        from diffusers.models.attention import FeedForward
        from diffusers.models.normalization import AdaLayerNormZero

        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)  # SiLU → Linear(D, 6D) of the shared conditioning; LN without affine
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(self, x: torch.Tensor, emb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, t, d = x.shape
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb=emb)
        h = self.dwconv(h.transpose(1, 2).reshape(b, d, *grid)).flatten(2).transpose(1, 2)
        x = x + gate_msa[:, None] * h
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class ConvNeXtDiT(_ModelMixin, _ConfigMixin):
    """Class-conditional diffusion transformer with ConvNeXt-style blocks (DiT-B/2 at depth 12,
    hidden 768, patch 2). ``forward(x (B, C, S, S), timestep (B,), class_labels (B,))`` →
    ``.sample`` (B, C_out, S, S), like :class:`diffusers.DiTTransformer2DModel`; label
    ``num_classes`` is the null label of classifier-free guidance."""

    @_register
    def __init__(self, sample_size: int = 32, patch_size: int = 4, in_channels: int = 3, out_channels: int = 3,
                 hidden_size: int = 128, num_layers: int = 4, kernel_size: int = 7, mlp_ratio: int = 4,
                 num_classes: int = 10) -> None:
        from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings, PatchEmbed

        super().__init__()
        if sample_size % patch_size:
            raise RmloraError(f"the model's sample size {sample_size} is not a multiple of its patch size {patch_size}")
        self.patch_size, self.out_channels = patch_size, out_channels
        self.pos_embed = PatchEmbed(height=sample_size, width=sample_size, patch_size=patch_size,
                                    in_channels=in_channels, embed_dim=hidden_size)
        self.emb = CombinedTimestepLabelEmbeddings(num_classes, hidden_size, class_dropout_prob=0.1)
        self.emb.class_embedder.dropout_prob = 0.0  # the table keeps its null row; the loss drops labels itself
        self.transformer_blocks = nn.ModuleList(
            [ConvNeXtDiTBlock(hidden_size, kernel_size, mlp_ratio) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(hidden_size, 2 * hidden_size)
        self.proj_out_2 = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier linears, zero biases, N(0, 0.02) time MLP and class table,
        adaLN modulations and the output projection at zero (every block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.pos_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.pos_embed.proj.bias)
        te = self.emb.timestep_embedder
        nn.init.normal_(te.linear_1.weight, std=0.02)
        nn.init.normal_(te.linear_2.weight, std=0.02)
        nn.init.normal_(self.emb.class_embedder.embedding_table.weight, std=0.02)
        for blk in self.transformer_blocks:
            nn.init.zeros_(blk.norm1.linear.weight)
            nn.init.zeros_(blk.norm1.linear.bias)
        for lin in (self.proj_out_1, self.proj_out_2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor,
                return_dict: bool = True) -> Any:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        p = self.patch_size
        grid = (hidden_states.shape[-2] // p, hidden_states.shape[-1] // p)
        x = self.pos_embed(hidden_states)  # (B, T, D)
        c = self.emb(timestep, class_labels, hidden_dtype=x.dtype)  # (B, D)
        for blk in self.transformer_blocks:
            x = blk(x, c, grid)
        shift, scale = self.proj_out_1(F.silu(c)).chunk(2, dim=1)
        x = self.proj_out_2(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])
        x = x.reshape(-1, *grid, p, p, self.out_channels)
        out = torch.einsum("nhwpqc->nchpwq", x).reshape(-1, self.out_channels, grid[0] * p, grid[1] * p)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def build_model(block: str, n_classes: int, *, sample_size: int, channels: int, patch_size: int, hidden_size: int,
                num_layers: int, num_attention_heads: int = 4, kernel_size: int = 7, mlp_ratio: int = 4) -> nn.Module:
    """The denoiser for ``n_classes`` classes (+ the null label): ``convnext`` (:class:`ConvNeXtDiT`)
    or ``attention`` (:class:`diffusers.DiTTransformer2DModel`, ``num_attention_heads`` heads of
    hidden/heads channels, a label table in every block)."""
    from diffusers.models.embeddings import LabelEmbedding

    if n_classes < 1:
        raise RmloraError("the style model needs at least one class")
    if block == "convnext":
        return ConvNeXtDiT(sample_size=sample_size, patch_size=patch_size, in_channels=channels, out_channels=channels,
                           hidden_size=hidden_size, num_layers=num_layers, kernel_size=kernel_size,
                           mlp_ratio=mlp_ratio, num_classes=n_classes)
    if block != "attention":
        raise RmloraError(f"unknown block {block!r}; known: {', '.join(BLOCKS)}")
    if hidden_size % num_attention_heads:
        raise RmloraError(f"hidden size {hidden_size} is not a multiple of {num_attention_heads} attention heads")
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(num_attention_heads=num_attention_heads,
                                  attention_head_dim=hidden_size // num_attention_heads, in_channels=channels,
                                  out_channels=channels, num_layers=num_layers, sample_size=sample_size,
                                  patch_size=patch_size, num_embeds_ada_norm=n_classes, norm_type="ada_norm_zero")
    # diffusers drops labels inside every block independently (one torch.rand per block): off here,
    # the loss drops them itself, the same for all blocks, to the null row each table keeps
    for m in model.modules():
        if isinstance(m, LabelEmbedding):
            m.dropout_prob = 0.0
    return model


# --------------------------------------------------------------------------- digital class rows
def label_tables(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every class-embedding table (one for the ConvNeXt DiT, one per block
    for diffusers' attention DiT)."""
    from diffusers.models.embeddings import LabelEmbedding

    return [(m, "embedding_table") for m in model.modules() if isinstance(m, LabelEmbedding)]


class DigitalEmbeddingRows(nn.Module):
    """A class-embedding table whose ``rows`` are trainable digital parameters and the rest
    frozen: the new classes' conditioning vectors, learned without touching anything else."""

    def __init__(self, base: nn.Embedding, rows: list[int]) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.register_buffer("index", torch.tensor(rows, dtype=torch.long, device=base.weight.device))
        self.rows = nn.Parameter(base.weight.detach()[self.index].clone())

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        w = self.base.weight.index_copy(0, self.index, self.rows)
        return nn.functional.embedding(labels, w)

    def fold(self) -> nn.Embedding:
        """Write the rows into the table and return it (a plain ``nn.Embedding`` again)."""
        with torch.no_grad():
            self.base.weight[self.index] = self.rows.detach()
        return self.base

    def bits(self, bits: int = 8) -> int:
        """SRAM bits of the rows: INT codes plus one 32-bit scale."""
        return self.rows.numel() * bits + 32


def attach_rows(model: nn.Module, rows: list[int]) -> list[DigitalEmbeddingRows]:
    """Make the embedding ``rows`` of every table trainable (digital); see :func:`fold_rows`."""
    out = []
    for parent, attr in label_tables(model):
        wrapped = DigitalEmbeddingRows(getattr(parent, attr), rows)
        setattr(parent, attr, wrapped)
        out.append(wrapped)
    return out


def fold_rows(model: nn.Module) -> dict[str, torch.Tensor]:
    """Undo :func:`attach_rows`, keeping the trained rows; returns them by table name."""
    saved = {}
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, DigitalEmbeddingRows):
                saved[f"{name}.{child_name}.rows"] = child.rows.detach().clone()
                setattr(m, child_name, child.fold())
    return saved


# --------------------------------------------------------------------------- the autoencoder
def build_vae(image_size: int, latent_channels: int, widths: tuple[int, ...]) -> nn.Module:
    """A small :class:`diffusers.AutoencoderKL` that divides the image side by 2^(len(widths)−1)
    into ``latent_channels`` channels (no hub weights: trained by :func:`rmlora.tasks.style_pipeline.train_vae`)."""
    from diffusers import AutoencoderKL

    n = len(widths)
    if n < 1 or image_size % (2 ** (n - 1)):
        raise RmloraError(f"a VAE with {n} levels cannot halve {image_size} px {n - 1} times")
    groups = min(8, *widths)
    if any(w % groups for w in widths):
        raise RmloraError(f"VAE widths {widths} must share a group-norm group size")
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(widths),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=groups,
                         sample_size=image_size, mid_block_add_attention=False)


__all__ = ["BLOCKS", "ConvNeXtDiT", "ConvNeXtDiTBlock", "DigitalEmbeddingRows", "attach_rows", "build_model",
           "build_vae", "fold_rows", "label_tables"]
