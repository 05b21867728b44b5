"""Behaviour tests for rmlora.data.styles and rmlora.metrics.generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from rmlora.data.styles import (
    STYLE_NAMES,
    SUBJECT_NAMES,
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
    kernel_distance,
    predict,
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
        return make_procedural(per_class=20, seed=0)


# ---------------------------------------------------------------------------
# Procedural set
# ---------------------------------------------------------------------------


def test_procedural_shapes_ranges_and_labels(small: StyleSet) -> None:
    n_styles, n_subjects, per_class = 10, 3, 20
    assert len(small) == n_styles * n_subjects * per_class
    assert small.images.shape == (len(small), 3, 32, 32)
    assert small.images.dtype == torch.float32
    assert float(small.images.min()) >= 0.0 and float(small.images.max()) <= 1.0
    for t in (small.labels, small.styles, small.subjects, small.image_ids):
        assert t.dtype == torch.int64 and t.shape == (len(small),)
    # 30 classes <style>-<subject>, style-major, as the authors' loader names them
    assert len(small.names) == 30 and small.names[:4] == ["hatching-cat", "hatching-bird", "hatching-fish",
                                                          "cross_hatch-cat"]
    assert small.subject_names == ["cat", "bird", "fish"] and small.style_names == list(STYLE_NAMES)
    assert small.kind == "procedural"
    assert len(torch.unique(small.image_ids)) == len(small)
    assert torch.equal(small.labels, small.styles * 3 + small.subjects)
    assert small.class_style[7] == 2 and small.class_subject[7] == 1
    assert torch.all(torch.bincount(small.labels) == per_class)
    # Images are not constant and not all alike.
    assert float(small.images.std(dim=(1, 2, 3)).min()) > 0.02
    assert float((small.images[0] - small.images[1]).abs().mean()) > 0.01


def test_procedural_deterministic_per_seed_and_different_across_seeds() -> None:
    a = make_procedural(n_styles=10, per_class=3, seed=5)
    b = make_procedural(n_styles=10, per_class=3, seed=5)
    c = make_procedural(n_styles=10, per_class=3, seed=6)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.subjects, b.subjects)
    assert a.images.shape == c.images.shape
    assert float((a.images - c.images).abs().mean()) > 0.05
    # Fewer styles is a prefix of more (same seed).
    p = make_procedural(n_styles=4, per_class=3, seed=5)
    assert torch.equal(p.images, a.images[: len(p)])
    assert p.names == a.names[:12]


def test_procedural_size_and_bad_arguments() -> None:
    s = make_procedural(n_styles=2, n_subjects=2, per_class=2, size=16)
    assert s.images.shape == (8, 3, 16, 16) and s.names == ["hatching-cat", "hatching-bird", "cross_hatch-cat",
                                                           "cross_hatch-bird"]
    with pytest.raises(RmloraError, match="n_styles"):
        make_procedural(n_styles=len(STYLE_NAMES) + 1)
    with pytest.raises(RmloraError, match="n_subjects"):
        make_procedural(n_subjects=0)
    with pytest.raises(RmloraError, match="per_class"):
        make_procedural(per_class=0)


def test_styles_differ_in_texture_not_only_colour(small: StyleSet) -> None:
    """Mean RGB alone is a weak cue; the trained CNN is far better (held-out images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sp = split_by_image(small, list(range(30)), n_val=3, n_test=5, seed=0)
    tr, va, te = sp["train"], sp["val"], sp["test"]

    def colour(s: StyleSet) -> np.ndarray:
        return s.images.mean(dim=(2, 3)).numpy()

    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    lr.fit(colour(tr), tr.styles.numpy())
    colour_acc = lr.score(colour(te), te.styles.numpy())

    model, val_acc = train_style_classifier(
        tr.images, tr.styles, va.images, va.styles, 10, steps=100, eval_every=20, seed=0,
        train_subject=tr.subjects, val_subject=va.subjects, n_subjects=3)
    assert isinstance(model, StyleClassifier) and not model.training
    style, subject = predict(model, te.images)
    cnn_acc = float((style == te.styles).float().mean())
    assert subject is not None and subject.shape == te.subjects.shape
    assert 0.0 <= val_acc <= 1.0
    assert colour_acc < 0.6, colour_acc
    assert cnn_acc > 0.8, cnn_acc
    assert cnn_acc > colour_acc + 0.3, (cnn_acc, colour_acc)


# ---------------------------------------------------------------------------
# StyleSet API and split
# ---------------------------------------------------------------------------


def test_resolve_expand_and_subset(small: StyleSet) -> None:
    assert small.resolve("hatching-cat") == 0
    assert small.resolve("Pixel_Art-Fish") == small.names.index("pixel_art-fish")
    assert small.resolve(3) == 3 and small.resolve("3") == 3
    assert small.expand("style:stippling") == [6, 7, 8] and small.expand("stippling-bird") == [7]
    assert small.expand("subject:fish") == [2 + 3 * k for k in range(10)]
    with pytest.raises(RmloraError, match="style:NAME"):
        small.resolve("van_gogh")
    with pytest.raises(RmloraError, match="unknown style 'van_gogh'.*hatching"):
        small.expand("style:van_gogh")
    with pytest.raises(RmloraError, match="unknown subject"):
        small.expand("subject:dog")
    with pytest.raises(RmloraError):
        small.resolve(30)
    sub = small.subset(small.labels == 2)
    assert len(sub) == 20 and set(sub.labels.tolist()) == {2}
    assert sub.names == small.names and sub.subject_names == small.subject_names


def test_split_by_image_no_overlap_and_balanced(small: StyleSet) -> None:
    sp = split_by_image(small, ["cel-cat", 0, "watercolour-fish"], n_val=4, n_test=6, seed=1)
    assert set(sp) == {"train", "val", "test"}
    ids = {k: set(v.image_ids.tolist()) for k, v in sp.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    want = {small.resolve("cel-cat"), 0, small.resolve("watercolour-fish")}
    for k, n_per in (("val", 4), ("test", 6), ("train", 10)):
        v = sp[k]
        assert set(v.labels.tolist()) == want
        assert torch.all(torch.bincount(v.labels)[list(want)] == n_per)
        assert torch.equal(v.images, small.images[v.image_ids])  # rows carry the right images
    # deterministic, and one class's split does not depend on the others listed
    t = sp["test"]
    again = split_by_image(small, ["cel-cat"], n_val=4, n_test=6, seed=1)
    cel = small.resolve("cel-cat")
    assert set(again["test"].image_ids.tolist()) == set(t.image_ids[t.labels == cel].tolist())
    other = split_by_image(small, ["cel-cat"], n_val=4, n_test=6, seed=2)
    assert set(other["test"].image_ids.tolist()) != set(again["test"].image_ids.tolist())
    with pytest.raises(RmloraError, match="needs at least"):
        split_by_image(small, [0], n_val=10, n_test=10)
    with pytest.raises(RmloraError, match="unknown class"):
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
    blue = np.zeros((40, 60, 3), np.uint8)
    blue[..., 2] = 200
    _write(root / "s10" / "Cats" / "1.png", blue)
    _write(root / "s2" / "Cats" / "10.png", red)
    _write(root / "s2" / "Cats" / "2.png", blue)
    _write(root / "s2" / "Birds" / "1.png", red)
    (root / "s2" / "Birds" / "notes.txt").write_text("not an image")
    ds = load_style_folder(root, size=8)
    assert ds.kind == "folder"
    assert ds.style_names == ["s2", "s10"] and ds.subject_names == ["Birds", "Cats"]  # natural order
    assert ds.names == ["s2-Birds", "s2-Cats", "s10-Cats"]  # the pairs present
    assert len(ds) == 4 and ds.images.shape == (4, 3, 8, 8)
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
    assert ds.labels.tolist() == [0, 1, 1, 2] and ds.styles.tolist() == [0, 0, 0, 1]
    assert ds.subjects.tolist() == [0, 1, 1, 1]
    # s2/Birds/1.png: red after the centre crop drops the black strip
    assert torch.allclose(ds.images[0], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 8, 8), atol=0.02)
    # natural file order within a folder: 2.png (blue) before 10.png (red)
    assert float(ds.images[1, 2].mean()) > 0.7 and float(ds.images[2, 0].mean()) > 0.9
    assert ds.expand("style:s10") == [2] and ds.expand("subject:Cats") == [1, 2]
    assert torch.equal(load_styles(str(root), size=8).images, ds.images)


@pytest.mark.parametrize("odd, what", [((30, 60, 3), "30x40"), ((40, 60, 4), "RGBA")])
def test_a_folder_whose_images_differ_in_size_or_mode_is_refused(tmp_path: Path, odd, what) -> None:
    root = tmp_path / "canvas"
    _write(root / "a" / "cat" / "1.png", np.zeros((40, 60, 3), np.uint8))
    _write(root / "b" / "cat" / "1.png", np.zeros(odd, np.uint8), mode="RGBA" if odd[-1] == 4 else "RGB")
    with pytest.raises(RmloraError, match="same size and mode") as exc:
        load_style_folder(root, size=8)
    assert "b/cat/1.png" in str(exc.value) and "\n" not in str(exc.value)


def test_load_style_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(RmloraError, match="does not exist"):
        load_style_folder(tmp_path / "missing")
    with pytest.raises(RmloraError, match="does not exist"):
        load_styles(str(tmp_path / "missing"))
    (tmp_path / "empty" / "style" / "subject").mkdir(parents=True)
    with pytest.raises(RmloraError, match="no images"):
        load_style_folder(tmp_path / "empty")
    bad = tmp_path / "bad" / "style" / "subject" / "x.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(RmloraError, match="x.png"):
        load_style_folder(tmp_path / "bad")


def test_load_styles_without_folder_is_procedural() -> None:
    ds = load_styles(None, seed=0)
    assert ds.kind == "procedural" and len(ds.names) == 30
    assert list(STYLE_NAMES) == ds.style_names and list(SUBJECT_NAMES) == ds.subject_names


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


def test_kernel_distance_is_unbiased_and_grows_with_a_shift() -> None:
    torch.manual_seed(0)
    model = StyleClassifier(3).eval()
    real = torch.rand(40, 3, 16, 16)
    same = torch.rand(40, 3, 16, 16)  # the same distribution
    shifted = (same * 0.4).clamp(0, 1)
    k_same, sd_same = kernel_distance(model, real, same, subsets=20, seed=0)
    k_shift, _ = kernel_distance(model, real, shifted, subsets=20, seed=0)
    assert abs(k_same) < 3 * sd_same + 1e-6  # unbiased: around zero for equal distributions
    assert k_shift > 10 * abs(k_same) and k_shift > 0
    assert kernel_distance(model, real, shifted, subsets=20, seed=0)[0] == k_shift  # seeded subsets
    assert all(np.isnan(v) for v in kernel_distance(model, real[:3], same, subsets=5))


def test_sample_grid_writes_png(tmp_path: Path, small: StyleSet) -> None:
    idx = torch.cat([torch.nonzero(small.labels == k).flatten()[:4] for k in range(3)])
    path = sample_grid(small.images[idx], 4, tmp_path / "out" / "grid.png", labels=small.names[:3], title="t")
    assert Path(path).is_file()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 60
    with pytest.raises(RmloraError, match="labels"):
        sample_grid(small.images[idx], 4, tmp_path / "g2.png", labels=["a"])
