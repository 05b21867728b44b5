"""Behaviour tests for rmlora.data.faces (real AT&T data, procedural faces, folders, splits)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rmlora.data.faces import (
    FaceSet,
    augment,
    augment_set,
    load_att,
    load_faces,
    load_image_folder,
    make_procedural,
    split_by_photo,
)
from rmlora.errors import RmloraError

ATT_DIR = Path(os.environ.get("RMLORA_DATA_DIR", "/work/shared/data")) / "att_faces"


@pytest.fixture(scope="module")
def att() -> FaceSet:
    if not (ATT_DIR / "s1" / "1.pgm").is_file():
        pytest.skip(f"AT&T faces not found at {ATT_DIR}")
    return load_att(ATT_DIR, size=16)


@pytest.fixture(scope="module")
def proc() -> FaceSet:
    return make_procedural(n_identities=10, photos_per_identity=20, size=16, seed=0)


def _ids(fs: FaceSet) -> set[int]:
    return set(fs.photo_ids.tolist())


def _centroid_and_brightness_accuracy(train: FaceSet, test: FaceSet) -> tuple[float, float]:
    k = train.n_identities
    xtr, xte = train.images.flatten(1), test.images.flatten(1)
    cent = torch.stack([xtr[train.labels == c].mean(0) for c in range(k)])
    acc = (torch.cdist(xte, cent).argmin(1) == test.labels).float().mean().item()
    btr, bte = xtr.mean(1), xte.mean(1)
    bcent = torch.stack([btr[train.labels == c].mean() for c in range(k)])
    bacc = ((bte[:, None] - bcent[None]).abs().argmin(1) == test.labels).float().mean().item()
    return acc, bacc


# --- AT&T -------------------------------------------------------------------


def test_att_shape_range_and_names(att: FaceSet) -> None:
    assert att.kind == "att"
    assert att.images.shape == (400, 1, 16, 16)
    assert att.images.dtype == torch.float32
    assert att.labels.dtype == torch.int64 and att.photo_ids.dtype == torch.int64
    assert float(att.images.min()) >= 0.0 and float(att.images.max()) <= 1.0
    # Real photos use most of the range and are not constant.
    assert float(att.images.max()) > 0.8 and float(att.images.min()) < 0.2
    assert att.names == [f"s{k}" for k in range(1, 41)]
    assert att.names[1] == "s2" and att.names[9] == "s10"
    assert torch.bincount(att.labels).tolist() == [10] * 40
    assert len(_ids(att)) == 400
    assert "40 identities" in att.source and "400 photos" in att.source


def test_att_label_follows_folder_number(att: FaceSet) -> None:
    # Label 9 must hold the photos of folder s10 (natural, not lexical, order).
    ref = load_att(ATT_DIR, size=16)  # also checks determinism of loading
    assert torch.equal(ref.images, att.images)
    one = load_image_folder(ATT_DIR, size=16)
    assert one.names == att.names
    first_s10 = np.asarray(Image.open(ATT_DIR / "s10" / "1.pgm").convert("L"), dtype=np.float32) / 255
    crop = first_s10[10:102, :]  # 112 rows -> central 92x92 square
    row = int(torch.nonzero(att.labels == 9)[0])
    # The loaded 16x16 photo is a downsampled version of that square: compare means.
    assert abs(float(att.images[row].mean()) - float(crop.mean())) < 0.02


def test_resolve(att: FaceSet) -> None:
    assert att.resolve("s3") == 2
    assert att.resolve(4) == 4
    assert att.resolve("s40") == 39
    assert att.resolve("7") == 7
    with pytest.raises(RmloraError, match="s41"):
        att.resolve("s41")
    with pytest.raises(RmloraError):
        att.resolve(40)
    with pytest.raises(RmloraError):
        att.resolve(-1)


def test_split_by_photo(att: FaceSet) -> None:
    labels = [0, 1, 2, 3, 4]
    s = split_by_photo(att, labels, n_val=2, n_test=2, seed=0)
    assert set(s) == {"train", "val", "test"}
    tr, va, te = _ids(s["train"]), _ids(s["val"]), _ids(s["test"])
    assert not (tr & va) and not (tr & te) and not (va & te)
    for lab in labels:
        assert int((s["train"].labels == lab).sum()) == 6
        assert int((s["val"].labels == lab).sum()) == 2
        assert int((s["test"].labels == lab).sum()) == 2
    for part in s.values():
        assert set(part.labels.tolist()) == set(labels)
        # Rows really are the photos with those ids.
        for i in range(len(part)):
            assert torch.equal(part.images[i], att.images[int(part.photo_ids[i])])
    again = split_by_photo(att, labels, seed=0)
    other = split_by_photo(att, labels, seed=1)
    for side in s:
        assert torch.equal(s[side].photo_ids, again[side].photo_ids)
    assert any(not torch.equal(s[side].photo_ids, other[side].photo_ids) for side in s)
    # An identity's split does not depend on the other identities listed.
    alone = split_by_photo(att, [3], seed=0)
    assert torch.equal(alone["test"].photo_ids, s["test"].photo_ids[s["test"].labels == 3])
    # Names work as well as indices.
    by_name = split_by_photo(att, ["s1", "s2"], seed=0)
    assert set(by_name["train"].labels.tolist()) == {0, 1}
    with pytest.raises(RmloraError, match="needs at least"):
        split_by_photo(att, [0], n_val=5, n_test=5)
    with pytest.raises(RmloraError):
        split_by_photo(att, ["nobody"])


def test_split_keeps_augmented_copies_together(att: FaceSet) -> None:
    small = att.subset(att.labels < 3)
    aug = augment_set(small, copies=2, generator=torch.Generator().manual_seed(0))
    both = FaceSet(
        images=torch.cat([small.images, aug.images]),
        labels=torch.cat([small.labels, aug.labels]),
        photo_ids=torch.cat([small.photo_ids, aug.photo_ids]),
        names=small.names,
        source=small.source,
        kind=small.kind,
    )
    s = split_by_photo(both, [0, 1, 2], seed=0)
    tr, va, te = _ids(s["train"]), _ids(s["val"]), _ids(s["test"])
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(s["test"]) == 3 * 2 * 3  # 2 photos x (original + 2 copies) x 3 identities


# --- procedural ---------------------------------------------------------------


def test_procedural_deterministic(proc: FaceSet) -> None:
    assert proc.kind == "procedural"
    assert proc.images.shape == (200, 1, 16, 16)
    assert float(proc.images.min()) >= 0.0 and float(proc.images.max()) <= 1.0
    assert proc.names[0] == "proc-0" and proc.names[-1] == "proc-9"
    same = make_procedural(n_identities=10, photos_per_identity=20, size=16, seed=0)
    assert torch.equal(same.images, proc.images)
    other = make_procedural(n_identities=10, photos_per_identity=20, size=16, seed=1)
    assert (other.images - proc.images).abs().mean() > 0.02
    # Photos of one identity are not copies of each other.
    first = proc.images[proc.labels == 0]
    assert (first[0] - first[1]).abs().mean() > 0.01
    assert make_procedural(2, 3, size=32, seed=0).images.shape == (6, 1, 32, 32)


def test_procedural_learnable_but_not_by_brightness(proc: FaceSet) -> None:
    s = split_by_photo(proc, list(range(10)), n_val=0, n_test=8, seed=0)
    acc, bacc = _centroid_and_brightness_accuracy(s["train"], s["test"])
    assert acc >= 0.5, acc  # chance is 0.1
    assert bacc <= 0.35, bacc
    assert acc - bacc >= 0.3, (acc, bacc)


# --- folders and resolver --------------------------------------------------------


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, level in [("s10", 200), ("s2", 60), ("alice", 120)]:
        d = root / name
        d.mkdir(parents=True)
        for j in range(3):
            arr = np.clip(level + rng.integers(-20, 20, (30, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, mode="L").save(d / f"{j}.png")
            if name == "alice":
                Image.fromarray(np.stack([arr] * 3, -1), mode="RGB").save(d / f"c{j}.jpg")
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not an image")


def test_load_image_folder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    fs = load_image_folder(tmp_path, size=8)
    assert fs.kind == "folder"
    assert fs.names == ["alice", "s2", "s10"]  # natural order, empty folder skipped
    assert fs.images.shape == (12, 1, 8, 8)
    assert torch.bincount(fs.labels).tolist() == [6, 3, 3]
    assert float(fs.images.min()) >= 0.0 and float(fs.images.max()) <= 1.0
    means = [float(fs.images[fs.labels == k].mean()) for k in range(3)]
    assert means[2] > means[0] > means[1]  # s10 bright, s2 dark
    assert abs(means[2] - 200 / 255) < 0.03
    assert fs.resolve("s10") == 2
    via_resolver = load_faces(str(tmp_path), size=8)
    assert via_resolver.kind == "folder" and torch.equal(via_resolver.images, fs.images)


def test_unreadable_image_raises(tmp_path: Path) -> None:
    d = tmp_path / "bob"
    d.mkdir()
    (d / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(RmloraError, match="broken.png"):
        load_image_folder(tmp_path)


def test_load_faces_errors(tmp_path: Path) -> None:
    with pytest.raises(RmloraError, match="does not exist"):
        load_faces(str(tmp_path / "missing"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RmloraError):
        load_faces(str(tmp_path / "nothing"))
    with pytest.raises(RmloraError):
        load_att(tmp_path / "nothing")


def test_load_faces_picks_att(att: FaceSet) -> None:
    fs = load_faces(str(ATT_DIR.parent), size=16)
    assert fs.kind == "att" and torch.equal(fs.images, att.images)
    assert load_faces(str(ATT_DIR), size=16).kind == "att"


def test_load_faces_fallback_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No data dir, no env var, empty scikit-learn cache: procedural, and no cache created.
    monkeypatch.delenv("RMLORA_DATA_DIR", raising=False)
    home = tmp_path / "skl"
    monkeypatch.setenv("SCIKIT_LEARN_DATA", str(home))
    fs = load_faces(None, size=16, seed=3)
    assert fs.kind == "procedural"
    assert torch.equal(fs.images, make_procedural(size=16, seed=3).images)
    assert not home.exists()
    monkeypatch.setenv("RMLORA_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(RmloraError, match="RMLORA_DATA_DIR"):
        load_faces(None)


# --- augmentation ---------------------------------------------------------------


def test_augment(proc: FaceSet) -> None:
    x = proc.images[:12]
    out = augment(x, torch.Generator().manual_seed(0), copies=3)
    assert out.shape == (36, 1, 16, 16) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = augment(x, torch.Generator().manual_seed(0), copies=3)
    assert torch.equal(out, again)
    other = augment(x, torch.Generator().manual_seed(1), copies=3)
    assert not torch.equal(out, other)
    # Copies differ from the originals but stay close to them (mild augmentation).
    for r in range(3):
        diff = (out[r * 12 : (r + 1) * 12] - x).abs().mean(dim=(1, 2, 3))
        assert float(diff.min()) > 0.005
        flipped = (out[r * 12 : (r + 1) * 12] - x.flip(-1)).abs().mean(dim=(1, 2, 3))
        assert float(torch.minimum(diff, flipped).max()) < 0.2
    assert augment(x, torch.Generator().manual_seed(0), copies=0).shape == (0, 1, 16, 16)

    aug = augment_set(proc.subset(torch.arange(12)), copies=2, generator=torch.Generator().manual_seed(0))
    assert len(aug) == 24
    assert torch.equal(aug.photo_ids, proc.photo_ids[:12].repeat(2))
    assert torch.equal(aug.labels, proc.labels[:12].repeat(2))


def test_load_olivetti_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sklearn.datasets
    from sklearn.utils import Bunch

    from rmlora.data.faces import load_olivetti

    calls = []
    rng = np.random.default_rng(0)
    imgs = rng.uniform(0, 1, (6, 64, 64)).astype(np.float32)
    imgs[3:] *= 0.3  # identity 1 darker

    def fake_fetch(data_home=None, download_if_missing=True, **kw):
        calls.append(download_if_missing)
        return Bunch(images=imgs, target=np.array([0, 0, 0, 1, 1, 1]))

    monkeypatch.setattr(sklearn.datasets, "fetch_olivetti_faces", fake_fetch)
    fs = load_olivetti(size=16, data_home=tmp_path)
    assert calls == [False]  # never asks to download by default
    assert fs.kind == "olivetti" and fs.images.shape == (6, 1, 16, 16)
    assert fs.names == ["olivetti-0", "olivetti-1"]
    assert float(fs.images.min()) >= 0.0 and float(fs.images.max()) <= 1.0
    assert abs(float(fs.images[:3].mean()) - float(imgs[:3].mean())) < 0.02
    assert float(fs.images[3:].mean()) < 0.5 * float(fs.images[:3].mean())
