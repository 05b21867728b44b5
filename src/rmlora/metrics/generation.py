"""Scores for generated stylized images: a style-and-subject classifier, recognition rates,
kernel and Fréchet distances in its feature space, and sample grids.

The generation workload judges a class-conditional image generator by

* :func:`predict` / :func:`style_rates` - what a classifier trained on real images of *all*
  classes says a sample is: its style (one head, with an extra "noise" class) and its subject
  (another head), scored separately;
* :func:`kernel_distance` - KID (Bińkowski et al. 2018: the unbiased MMD² with a cubic
  polynomial kernel, mean and spread over random subsets; torchmetrics' estimator) between the
  classifier's features of real and generated images;
* :func:`frechet_distance` / :func:`fd_per_class` - FID-like distances between Gaussians fitted
  to the same features (biased upwards for small sample counts: compare within a table).

:class:`StyleClassifier` is a small CNN for RGB images in ``[0, 1]``;
:func:`train_style_classifier` trains it and picks the checkpoint with the best
validation accuracy. :func:`sample_grid` saves a labelled PNG grid.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rmlora.errors import RmloraError
from rmlora.metrics.classification import model_device
from rmlora.threads import limit_threads

__all__ = [
    "StyleClassifier",
    "predict",
    "kernel_distance",
    "train_style_classifier",
    "classifier_features",
    "style_rates",
    "frechet_distance",
    "fd_per_class",
    "sample_grid",
]


# ---------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class StyleClassifier(nn.Module):
    """Small CNN style classifier for RGB images in ``[0, 1]`` (any size >= 8).

    Three 3x3 conv blocks with ``widths`` channels (default 32-64-128; each
    conv + BatchNorm + ReLU, 2x2 max-pooling between blocks), global average
    pooling to the
    ``features`` (B, widths[-1]) and a linear head to ``n_classes`` logits; with
    ``n_subjects`` a second head gives the subject's logits (:meth:`both` returns both heads).
    """

    def __init__(self, n_classes: int, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128),
                 n_subjects: int = 0) -> None:
        super().__init__()
        if n_classes < 1:
            raise RmloraError(f"StyleClassifier needs n_classes >= 1, got {n_classes}")
        if len(widths) != 3 or min(widths) < 1:
            raise RmloraError(f"StyleClassifier widths must be 3 positive ints, got {tuple(widths)}")
        w1, w2, w3 = (int(w) for w in widths)
        self.n_classes = int(n_classes)
        self.in_channels = int(in_channels)
        self.block1 = _block(in_channels, w1)
        self.block2 = nn.Sequential(nn.MaxPool2d(2), _block(w1, w2))
        self.block3 = nn.Sequential(nn.MaxPool2d(2), _block(w2, w3))
        self.head = nn.Linear(w3, n_classes)
        self.n_subjects = int(n_subjects)
        self.subject_head = nn.Linear(w3, n_subjects) if n_subjects else None  # a second, separate verdict
        self.feature_dim = w3

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, D) of images ``x`` (B, C, H, W) in ``[0, 1]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise RmloraError(
                f"StyleClassifier expects images (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h = self.block3(self.block2(self.block1(x * 2.0 - 1.0)))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes)."""
        return self.head(self.features(x))

    def both(self, x: torch.Tensor) -> torch.Tensor:
        """Class and subject logits side by side (B, n_classes + n_subjects)."""
        f = self.features(x)
        return torch.cat([self.head(f), self.subject_head(f)], 1) if self.subject_head is not None else self.head(f)


def _as_images(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 4:
        raise RmloraError(f"{name} must be images (N, C, H, W), got shape {tuple(x.shape)}")
    return x.float()


def _as_labels(y, n: int, name: str) -> torch.Tensor:
    y = torch.as_tensor(y).long().reshape(-1)
    if y.shape[0] != n:
        raise RmloraError(f"{name} has {y.shape[0]} labels for {n} images")
    return y


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor, fn, batch_size: int = 256) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = model_device(model)
    dev = torch.device("cpu") if dev is None else dev
    try:
        out = [fn(x[i : i + batch_size].to(dev).float()).detach().float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0)


def _augment(x: torch.Tensor, gen: torch.Generator, noise: float) -> torch.Tensor:
    """Training-only augmentation: random flips, small shifts (reflect), brightness
    jitter and a little Gaussian noise (so generated, slightly noisy samples still
    score sensibly)."""
    b = x.shape[0]
    dev = x.device
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip_h.to(dev)[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v.to(dev)[:, None, None, None], x.flip(2), x)
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    ox = int(torch.randint(0, 2 * pad + 1, (1,), generator=gen))
    oy = int(torch.randint(0, 2 * pad + 1, (1,), generator=gen))
    h, w = x.shape[-2:]
    x = xp[:, :, oy : oy + h, ox : ox + w]
    scale = (1.0 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)).to(dev)
    x = x * scale
    if noise > 0:
        sig = (noise * torch.rand(b, 1, 1, 1, generator=gen)).to(dev)
        x = x + sig * torch.randn(x.shape, generator=gen).to(dev)
    return x.clamp(0.0, 1.0)


def train_style_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    n_classes: int,
    steps: int = 250,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 64,
    lr: float = 3e-3,
    eval_every: int = 25,
    noise: float = 0.05,
    widths: Sequence[int] = (32, 64, 128),
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    train_subject: torch.Tensor | None = None,
    val_subject: torch.Tensor | None = None,
    n_subjects: int = 0,
) -> tuple[StyleClassifier, float]:
    """Train a :class:`StyleClassifier` on real images of all styles.

    AdamW with a one-cycle learning-rate schedule for ``steps`` mini-batches of
    ``batch_size`` (random flips, 2-pixel shifts, brightness jitter and light
    Gaussian noise up to ``noise``); every ``eval_every`` steps and at the end
    the model is scored on ``(val_x, val_y)`` and the best-scoring weights are
    kept (ties: the later one). Images are ``(N, 3, H, W)`` in ``[0, 1]``,
    labels ``0..n_classes-1``. ``num_threads`` temporarily sets torch's thread
    count (1 is fastest on a busy machine).

    With ``n_subjects`` the subject head is trained too on ``train_subject`` (-1: no subject, as
    the noise images) and the validation score is the mean of the two heads' accuracies.

    Returns ``(model, val_accuracy)``: the selected model in eval mode and its
    validation accuracy in ``[0, 1]`` (``nan`` with an empty validation set,
    in which case the last weights are kept).
    """
    train_x = _as_images(train_x, "train_x")
    val_x = _as_images(val_x, "val_x")
    train_y = _as_labels(train_y, len(train_x), "train_y")
    val_y = _as_labels(val_y, len(val_x), "val_y")
    if len(train_x) == 0:
        raise RmloraError("train_style_classifier needs at least one training image")
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise RmloraError(f"steps, batch_size and eval_every must be >= 1, got {steps}, {batch_size}, {eval_every}")
    for name, y in (("train_y", train_y), ("val_y", val_y)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise RmloraError(f"{name} holds labels outside 0..{n_classes - 1}")
    device = torch.device(device)
    with limit_threads(num_threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(int(seed))
        model = StyleClassifier(n_classes, in_channels=train_x.shape[1], widths=widths, n_subjects=n_subjects).to(device)
        ts = None if not n_subjects else torch.as_tensor(train_subject).long().to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        xs, ys = train_x.to(device), train_y.to(device)
        n = len(xs)
        best_acc, best_state = -1.0, None
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        pos = 0

        def evaluate() -> float:
            if len(val_x) == 0:
                return float("nan")
            pred = _run(model, val_x, model.forward).argmax(dim=1)
            acc = float((pred == val_y).float().mean())
            if n_subjects:
                vs = torch.as_tensor(val_subject).long()
                sp = _run(model, val_x, lambda v: model.subject_head(model.features(v))).argmax(dim=1)
                keep = vs >= 0
                acc = 0.5 * (acc + float((sp[keep] == vs[keep]).float().mean()))
            return acc

        for step in range(1, steps + 1):
            if pos + batch_size > n:
                perm = torch.randperm(n, generator=gen)
                pos = 0
            idx = perm[pos : pos + batch_size].to(device)
            pos += batch_size
            model.train()
            xb = _augment(xs[idx], gen, noise)
            f = model.features(xb)
            loss = F.cross_entropy(model.head(f), ys[idx], label_smoothing=0.05)
            if n_subjects:
                loss = loss + F.cross_entropy(model.subject_head(f), ts[idx], ignore_index=-1, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % eval_every == 0 or step == steps:
                acc = evaluate()
                if not math.isnan(acc) and acc >= best_acc:
                    best_acc, best_state = acc, copy.deepcopy(model.state_dict())
                if progress:
                    print(
                        f"style classifier step {step}/{steps} loss {float(loss.detach()):.3f} "
                        f"val acc {acc:.3f} ({time.perf_counter() - t0:.1f}s)",
                        flush=True,
                    )
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
    return model, (best_acc if best_state is not None else float("nan"))


def classifier_features(classifier: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features (N, D) of images ``x`` (on the CPU, eval mode)."""
    x = _as_images(x, "images")
    if not hasattr(classifier, "features"):
        raise RmloraError("classifier has no features() method")
    if len(x) == 0:
        dim = getattr(classifier, "feature_dim", 0)
        return torch.empty(0, dim)
    return _run(classifier, x, classifier.features, batch_size)


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def style_rates(
    classifier: nn.Module, samples: torch.Tensor, conditioned_on: torch.Tensor, batch_size: int = 256
) -> dict[int, float]:
    """Per conditioning style ``c``: the share of ``samples`` generated for ``c`` that
    ``classifier`` labels ``c`` (arg-max of its logits).

    ``samples`` (N, C, H, W) in ``[0, 1]``; ``conditioned_on`` (N,) the style each
    sample was generated for. Returns ``{c: rate in [0, 1]}`` for every style
    present in ``conditioned_on``, in increasing order of ``c``.
    """
    samples = _as_images(samples, "samples")
    cond = _as_labels(conditioned_on, len(samples), "conditioned_on")
    if len(samples) == 0:
        return {}
    logits = _run(classifier, samples, classifier, batch_size)
    if logits.dim() != 2 or logits.shape[0] != len(samples):
        raise RmloraError(f"classifier must return logits (N, K); got {tuple(logits.shape)}")
    pred = logits.argmax(dim=1)
    return {int(c): float((pred[cond == c] == c).float().mean()) for c in torch.unique(cond).tolist()}


def predict(classifier: nn.Module, samples: torch.Tensor, batch_size: int = 256
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What ``classifier`` calls each sample (N, C, H, W): (class arg-max (N,), subject arg-max (N,)
    or None without a subject head)."""
    samples = _as_images(samples, "samples")
    k = classifier.n_classes
    logits = _run(classifier, samples, getattr(classifier, "both", classifier), batch_size)
    subj = logits[:, k:].argmax(dim=1) if logits.shape[1] > k else None
    return logits[:, :k].argmax(dim=1), subj


class _Features(nn.Module):
    """A classifier's penultimate features as torchmetrics' feature extractor."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_features(self.classifier, x).double()


def kernel_distance(classifier: nn.Module, real: torch.Tensor, generated: torch.Tensor, subsets: int = 50,
                    seed: int = 0) -> tuple[float, float]:
    """KID between ``real`` and ``generated`` images (N, C, H, W) in [0, 1] on the classifier's
    features: torchmetrics' ``KernelInceptionDistance`` (unbiased MMD², kernel (x·y/d + 1)³)
    over ``subsets`` random subsets of half the smaller set (drawn from ``seed``). Returns
    (mean, standard deviation over subsets); (nan, nan) with fewer than 4 images on a side."""
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(generated))
    if n < 4:
        return float("nan"), float("nan")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "will save all extracted features": a few hundred here
        kid = KernelInceptionDistance(feature=_Features(classifier), subsets=subsets, subset_size=n // 2)
    kid.update(_as_images(real, "real"), real=True)
    kid.update(_as_images(generated, "generated"), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def _as_np2d(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise RmloraError(f"{name} must be a 2-D feature array (N, D), got shape {a.shape}")
    if a.shape[0] < 2:
        raise RmloraError(f"{name} needs at least 2 feature vectors for a covariance, got {a.shape[0]}")
    if not np.all(np.isfinite(a)):
        raise RmloraError(f"{name} holds non-finite values")
    return a


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (as in FID).

    ``d = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with sample
    means and covariances of ``feats_a`` (N, D) and ``feats_b`` (M, D) (numpy or
    torch, at least 2 rows each). The matrix square root uses
    :func:`scipy.linalg.sqrtm`. When a covariance is singular (e.g. fewer
    samples than dimensions) or the root comes out non-finite, ``eps * I``
    (scaled by the covariances' size) is added to both covariances in every
    term; small imaginary parts from numerical error are dropped. Returns a
    float ``>= 0`` (tiny negative rounding is clipped to 0).
    """
    import warnings

    from scipy import linalg

    a = _as_np2d(feats_a, "feats_a")
    b = _as_np2d(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise RmloraError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    dim = a.shape[1]
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    scale = max(float(np.trace(s_a)), float(np.trace(s_b)), 1e-12) / dim
    off = eps * max(scale, 1.0)

    def singular(m: np.ndarray) -> bool:
        ev = np.linalg.eigvalsh(m)
        return bool(ev[0] <= 1e-10 * max(float(ev[-1]), 1e-300))

    def root(m: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LinAlgWarning on near-singular input
            out = linalg.sqrtm(m)
        if isinstance(out, tuple):  # scipy versions returning (root, error)
            out = out[0]
        return np.asarray(out)

    # the matrices are small (D ~ 128): threaded BLAS on a busy machine is ~100x slower
    with limit_threads(blas=1):
        if singular(s_a) or singular(s_b):
            s_a, s_b = s_a + off * np.eye(dim), s_b + off * np.eye(dim)
        covmean = root(s_a @ s_b)
        for _ in range(3):
            bad = not np.all(np.isfinite(covmean))
            if not bad and np.iscomplexobj(covmean):
                bad = float(np.max(np.abs(covmean.imag))) > 1e-3 * max(1.0, float(np.max(np.abs(covmean.real))))
            if not bad:
                break
            s_a, s_b = s_a + off * np.eye(dim), s_b + off * np.eye(dim)
            off *= 100.0
            covmean = root(s_a @ s_b)
        else:
            if not np.all(np.isfinite(covmean)):
                raise RmloraError("frechet_distance: matrix square root did not converge")
    covmean = np.real(covmean)
    d = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))
    return max(d, 0.0)


def fd_per_class(
    classifier: nn.Module,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    gen_x: torch.Tensor,
    gen_y: torch.Tensor,
    classes: Sequence[int],
    batch_size: int = 256,
) -> dict[int, float]:
    """Per class ``c`` in ``classes``: :func:`frechet_distance` between the classifier
    features of real images of ``c`` and generated images conditioned on ``c``.

    A class with fewer than 2 real or 2 generated images gets ``nan``.
    """
    real_x = _as_images(real_x, "real_x")
    gen_x = _as_images(gen_x, "gen_x")
    real_y = _as_labels(real_y, len(real_x), "real_y")
    gen_y = _as_labels(gen_y, len(gen_x), "gen_y")
    out: dict[int, float] = {}
    for c in classes:
        c = int(c)
        r, g = real_x[real_y == c], gen_x[gen_y == c]
        if len(r) < 2 or len(g) < 2:
            out[c] = float("nan")
            continue
        fr = classifier_features(classifier, r, batch_size)
        fg = classifier_features(classifier, g, batch_size)
        out[c] = frechet_distance(fr, fg)
    return out


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------


def sample_grid(
    images: torch.Tensor,
    nrow: int,
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save ``images`` (N, 3, H, W) (or (N, 1, H, W)) in ``[0, 1]`` as a PNG grid.

    ``nrow`` images per row (as torchvision's ``make_grid``), rows filled in
    order; ``labels`` (one per row) are written left of the rows; ``title`` on
    top. Values are clipped to ``[0, 1]``. Parent folders are created. Returns
    the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = torch.as_tensor(images).detach().float().cpu()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise RmloraError(f"sample_grid expects images (N, 3, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    if len(x) == 0:
        raise RmloraError("sample_grid got no images")
    if isinstance(nrow, bool) or int(nrow) < 1:
        raise RmloraError(f"sample_grid: nrow must be >= 1, got {nrow!r}")
    nrow = int(nrow)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    if labels is not None and len(labels) != rows:
        raise RmloraError(f"sample_grid: {len(labels)} labels for {rows} rows")
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    pad = max(1, h // 16)
    canvas = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), dtype=np.float32)
    arr = x.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y0 : y0 + h, x0 : x0 + w] = arr[i]
    cell_in = max(0.45, 0.9 * h / 32)
    label_in = 0.0
    if labels is not None:
        label_in = min(2.2, 0.09 * max(len(str(s)) for s in labels) + 0.2)
    fig_w = nrow * cell_in + label_in + 0.2
    fig_h = rows * cell_in + (0.45 if title else 0.15)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    try:
        left = label_in / fig_w
        top = 1.0 - (0.4 / fig_h if title else 0.1 / fig_h)
        ax = fig.add_axes((left, 0.05 / fig_h, 1.0 - left - 0.1 / fig_w, top - 0.05 / fig_h))
        ax.imshow(canvas, interpolation="nearest")
        ax.set_xticks([])
        if labels is not None:
            ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)])
            ax.set_yticklabels([str(s) for s in labels], fontsize=9)
            ax.tick_params(axis="y", length=0)
        else:
            ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
        if title:
            fig.suptitle(str(title), fontsize=11, y=1.0 - 0.05 / fig_h, va="top")
        out = Path(path).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
