"""Behaviour tests for rmlora.data.styles and rmlora.metrics.generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from rmlora.data.styles import (
    CONTENT_NAMES,
    STYLE_NAMES,
    StyleSet,
    load_style_folder,
    load_styles,
    make_procedural,
    split_by_image,
)
from rmlora.errors import RmloraError
from rmlora.metrics.generation import (
    StyleClassifier,
    fd_per_class,
    frechet_distance,
    sample_grid,
    style_rates,
    train_style_classifier,
)
from rmlora.threads import limit_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with limit_threads(1):
        yield


@pytest.fixture(scope="module")
def small() -> StyleSet:
    with limit_threads(1):
        return make_procedural(per_pair=20, seed=0)


# ---------------------------------------------------------------------------
# Procedural set
# ---------------------------------------------------------------------------


def test_procedural_shapes_ranges_and_labels(small: StyleSet) -> None:
    n_styles, n_contents, per_pair = 10, 3, 20
    assert len(small) == n_styles * n_contents * per_pair
    assert small.images.shape == (len(small), 3, 32, 32)
    assert small.images.dtype == torch.float32
    assert float(small.images.min()) >= 0.0 and float(small.images.max()) <= 1.0
    for t in (small.labels, small.contents, small.image_ids):
        assert t.dtype == torch.int64 and t.shape == (len(small),)
    assert len(small.names) >= 10 and len(set(small.names)) == len(small.names)
    assert small.content_names == ["cat", "bird", "fish"]
    assert small.kind == "procedural"
    assert len(torch.unique(small.image_ids)) == len(small)
    # Every (style, content) pair has per_pair images.
    pairs = small.labels * 10 + small.contents
    counts = torch.bincount(pairs, minlength=100).reshape(10, 10)[:, :3]
    assert torch.all(counts == per_pair)
    # Images are not constant and not all alike.
    assert float(small.images.std(dim=(1, 2, 3)).min()) > 0.02
    assert float((small.images[0] - small.images[1]).abs().mean()) > 0.01


def test_procedural_deterministic_per_seed_and_different_across_seeds() -> None:
    a = make_procedural(n_styles=10, per_pair=3, seed=5)
    b = make_procedural(n_styles=10, per_pair=3, seed=5)
    c = make_procedural(n_styles=10, per_pair=3, seed=6)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.contents, b.contents)
    assert a.images.shape == c.images.shape
    assert float((a.images - c.images).abs().mean()) > 0.05
    # Fewer styles is a prefix of more (same seed).
    p = make_procedural(n_styles=4, per_pair=3, seed=5)
    assert torch.equal(p.images, a.images[: len(p)])
    assert p.names == a.names[:4]


def test_procedural_size_and_bad_arguments() -> None:
    s = make_procedural(n_styles=2, n_contents=2, per_pair=2, size=16)
    assert s.images.shape == (8, 3, 16, 16)
    with pytest.raises(RmloraError, match="n_styles"):
        make_procedural(n_styles=len(STYLE_NAMES) + 1)
    with pytest.raises(RmloraError, match="n_contents"):
        make_procedural(n_contents=0)
    with pytest.raises(RmloraError, match="per_pair"):
        make_procedural(per_pair=0)


def test_styles_differ_in_texture_not_only_colour(small: StyleSet) -> None:
    """Mean RGB alone is a weak cue; the trained CNN is far better (held-out images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sp = split_by_image(small, list(range(10)), n_val=10, n_test=15, seed=0)
    tr, va, te = sp["train"], sp["val"], sp["test"]

    def colour(s: StyleSet) -> np.ndarray:
        return s.images.mean(dim=(2, 3)).numpy()

    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    lr.fit(colour(tr), tr.labels.numpy())
    colour_acc = lr.score(colour(te), te.labels.numpy())

    model, val_acc = train_style_classifier(
        tr.images, tr.labels, va.images, va.labels, 10, steps=100, eval_every=20, seed=0
    )
    assert isinstance(model, StyleClassifier) and not model.training
    with torch.no_grad():
        cnn_acc = float((model(te.images).argmax(1) == te.labels).float().mean())
    assert 0.0 <= val_acc <= 1.0
    assert colour_acc < 0.6, colour_acc
    assert cnn_acc > 0.8, cnn_acc
    assert cnn_acc > colour_acc + 0.3, (cnn_acc, colour_acc)


# ---------------------------------------------------------------------------
# StyleSet API and split
# ---------------------------------------------------------------------------


def test_resolve_and_subset(small: StyleSet) -> None:
    assert small.resolve("hatching") == 0
    assert small.resolve("Pixel_Art") == small.names.index("pixel_art")
    assert small.resolve(3) == 3 and small.resolve("3") == 3
    with pytest.raises(RmloraError, match="hatching"):
        small.resolve("van_gogh")
    with pytest.raises(RmloraError):
        small.resolve(10)
    sub = small.subset(small.labels == 2)
    assert len(sub) == 60 and set(sub.labels.tolist()) == {2}
    assert sub.names == small.names and sub.content_names == small.content_names


def test_split_by_image_no_overlap_and_balanced(small: StyleSet) -> None:
    sp = split_by_image(small, ["cel", 0, "watercolour"], n_val=4, n_test=6, seed=1)
    assert set(sp) == {"train", "val", "test"}
    ids = {k: set(v.image_ids.tolist()) for k, v in sp.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    want = {small.resolve("cel"), 0, small.resolve("watercolour")}
    for k, n_per in (("val", 4), ("test", 6), ("train", 50)):
        v = sp[k]
        assert set(v.labels.tolist()) == want
        assert torch.all(torch.bincount(v.labels)[list(want)] == n_per)
        # rows carry the right images
        assert torch.equal(v.images, small.images[v.image_ids])
    # contents spread evenly over the test side (6 per style -> 2 of each)
    t = sp["test"]
    for lab in want:
        assert torch.bincount(t.contents[t.labels == lab], minlength=3).tolist() == [2, 2, 2]
    # deterministic, and one style's split does not depend on the others listed
    again = split_by_image(small, ["cel"], n_val=4, n_test=6, seed=1)
    cel = small.resolve("cel")
    assert set(again["test"].image_ids.tolist()) == set(t.image_ids[t.labels == cel].tolist())
    other = split_by_image(small, ["cel"], n_val=4, n_test=6, seed=2)
    assert set(other["test"].image_ids.tolist()) != set(again["test"].image_ids.tolist())
    with pytest.raises(RmloraError, match="needs at least"):
        split_by_image(small, [0], n_val=30, n_test=30)
    with pytest.raises(RmloraError, match="unknown style"):
        split_by_image(small, ["nope"], n_val=1, n_test=1)


# ---------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------


def _write(path: Path, arr: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_load_style_folder(tmp_path: Path) -> None:
    root = tmp_path / "canvas"
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 255
    red[:, :10] = 0  # cropped away by the centre square crop (columns 10..49 kept)
    blue = np.zeros((24, 24, 3), np.uint8)
    blue[..., 2] = 200
    _write(root / "s10" / "Cats" / "1.png", blue)
    _write(root / "s2" / "Cats" / "10.png", red)
    _write(root / "s2" / "Cats" / "2.png", blue)
    _write(root / "s2" / "Birds" / "1.png", red)
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent -> white
    _write(root / "s2" / "Birds" / "a.png", rgba, mode="RGBA")
    (root / "s2" / "Birds" / "notes.txt").write_text("not an image")
    ds = load_style_folder(root, size=8)
    assert ds.kind == "folder"
    assert ds.names == ["s2", "s10"]  # natural order
    assert ds.content_names == ["Birds", "Cats"]
    assert len(ds) == 5 and ds.images.shape == (5, 3, 8, 8)
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
    assert ds.labels.tolist() == [0, 0, 0, 0, 1]
    assert ds.contents.tolist() == [0, 0, 1, 1, 1]
    # s2/Birds/1.png: red after the centre crop drops the black strip
    assert torch.allclose(ds.images[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 8, 8), atol=0.02)
    assert torch.allclose(ds.images[1], torch.ones(3, 8, 8), atol=0.02)  # transparent -> white
    # natural file order within a folder: 2.png (blue) before 10.png (red)
    assert float(ds.images[2, 2].mean()) > 0.7 and float(ds.images[3, 0].mean()) > 0.9
    assert ds.resolve("s10") == 1
    with pytest.raises(RmloraError, match="s2, s10"):
        ds.resolve("s3")
    assert torch.equal(load_styles(str(root), size=8).images, ds.images)


def test_load_style_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(RmloraError, match="does not exist"):
        load_style_folder(tmp_path / "missing")
    with pytest.raises(RmloraError, match="does not exist"):
        load_styles(str(tmp_path / "missing"))
    (tmp_path / "empty" / "style" / "content").mkdir(parents=True)
    with pytest.raises(RmloraError, match="no images"):
        load_style_folder(tmp_path / "empty")
    bad = tmp_path / "bad" / "style" / "content" / "x.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(RmloraError, match="x.png"):
        load_style_folder(tmp_path / "bad")


def test_load_styles_without_folder_is_procedural() -> None:
    ds = load_styles(None, seed=0)
    assert ds.kind == "procedural" and len(ds.names) >= 10 and len(ds.content_names) >= 3
    assert list(STYLE_NAMES[:10]) == ds.names and list(CONTENT_NAMES) == ds.content_names


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def test_frechet_distance_properties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    d1 = frechet_distance(x, x + 0.5)
    d2 = frechet_distance(x, x + 1.5)
    # Same covariance: the distance is exactly |mean shift|^2 = 6 * shift^2.
    assert d1 == pytest.approx(6 * 0.25, rel=1e-6)
    assert d2 == pytest.approx(6 * 2.25, rel=1e-6)
    y = rng.normal(loc=0.3, scale=2.0, size=(250, 6))
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6)
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(frechet_distance(x, y))
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    a = rng.normal(1.0, 1.0, size=(2000, 1))
    b = rng.normal(3.0, 2.0, size=(2000, 1))
    want = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    # Fewer samples than dimensions: singular covariances still give a finite value.
    s = frechet_distance(rng.normal(size=(5, 40)), rng.normal(size=(7, 40)))
    assert np.isfinite(s) and s >= 0
    with pytest.raises(RmloraError, match="dimension"):
        frechet_distance(x, x[:, :3])


class _Stub(nn.Module):
    """Predicts the class written in pixel (0, 0, 0) of each image (x 10)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.k = k

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = torch.round(x[:, 0, 0, 0] * 10).long()
        return torch.nn.functional.one_hot(cls, self.k).float() * 5.0


def test_style_rates_with_stub_classifier() -> None:
    def imgs(classes: list[int]) -> torch.Tensor:
        x = torch.zeros(len(classes), 3, 4, 4)
        x[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float32) / 10
        return x

    pred = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    cond = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    rates = style_rates(_Stub(), imgs(pred), cond)
    assert rates == pytest.approx({0: 0.75, 1: 0.5, 2: 0.5})
    assert list(rates) == [0, 1, 2]
    assert style_rates(_Stub(), imgs([3, 3]), torch.tensor([3, 3])) == {3: 1.0}
    with pytest.raises(RmloraError):
        style_rates(_Stub(), imgs(pred), cond[:5])


def test_fd_per_class_and_classifier_features() -> None:
    torch.manual_seed(0)
    model = StyleClassifier(3).eval()
    real = torch.rand(30, 3, 16, 16)
    real_y = torch.arange(3).repeat_interleave(10)
    out = fd_per_class(model, real, real_y, real, real_y, [0, 1, 2])
    assert set(out) == {0, 1, 2} and all(v == pytest.approx(0.0, abs=1e-4) for v in out.values())
    shifted = fd_per_class(model, real, real_y, (real * 0.3).clamp(0, 1), real_y, [0, 2])
    assert set(shifted) == {0, 2} and all(v > 1e-3 for v in shifted.values())
    assert np.isnan(fd_per_class(model, real, real_y, real[:1], real_y[:1], [0])[0])
    assert model.features(real).shape == (30, 128) and model(real).shape == (30, 3)


def test_sample_grid_writes_png(tmp_path: Path, small: StyleSet) -> None:
    idx = torch.cat([torch.nonzero(small.labels == k).flatten()[:4] for k in range(3)])
    path = sample_grid(small.images[idx], 4, tmp_path / "out" / "grid.png", labels=small.names[:3], title="t")
    assert Path(path).is_file()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 60
    with pytest.raises(RmloraError, match="labels"):
        sample_grid(small.images[idx], 4, tmp_path / "g2.png", labels=["a"])
