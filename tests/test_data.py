"""Tests of the data layer: npz loading/validation, torchvision fallback errors, augmentation,
the in-memory datamodule (splits, determinism, resumability) and its use under Lightning."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autonorm.data import (
    DATASET_NAMES,
    DATASET_STATS,
    BatchLoader,
    DataError,
    ImageDataModule,
    load_npz,
    random_crop,
    random_flip,
    resolve_dataset,
    to_served_format,
    write_npz_atomic,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------------------------------ helpers
def make_arrays(n_train: int = 40, n_test: int = 20, hw: int = 32, c: int = 3, seed: int = 0) -> dict:
    """Small valid data set; image i of x_train carries its index in pixel (0, 0, :2)."""
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, hw, hw, c), dtype=np.uint8)
    x_train[:, 0, 0, 0] = np.arange(n_train) % 256
    if c > 1:
        x_train[:, 0, 0, 1] = np.arange(n_train) // 256
    return {
        "x_train": x_train,
        "y_train": np.arange(n_train, dtype=np.int64) % 10,
        "x_test": rng.integers(0, 256, size=(n_test, hw, hw, c), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.int64) % 10,
        "classes": np.array([f"c{i}" for i in range(10)]),
    }


def image_ids(x: torch.Tensor) -> set[int]:
    """Recover the indices encoded by :func:`make_arrays` from served (N, 3, 32, 32) images."""
    return set((x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist())


# ------------------------------------------------------------------------------------ minis
@pytest.mark.parametrize(
    "name,shape_train,n_train,n_test",
    [("mnist_mini", (28, 28, 1), 5000, 1000), ("cifar10_mini", (32, 32, 3), 2500, 500)],
)
def test_minis_shapes_and_stratification(tmp_path, name, shape_train, n_train, n_test):
    d = resolve_dataset(name, root=tmp_path / "nowhere")  # minis ignore the root
    assert not (tmp_path / "nowhere").exists()
    assert d["x_train"].shape == (n_train, *shape_train) and d["x_train"].dtype == np.uint8
    assert d["x_test"].shape == (n_test, *shape_train) and d["x_test"].dtype == np.uint8
    assert d["y_train"].dtype == np.int64 and d["y_test"].dtype == np.int64
    assert np.bincount(d["y_train"], minlength=10).tolist() == [n_train // 10] * 10
    assert np.bincount(d["y_test"], minlength=10).tolist() == [n_test // 10] * 10
    assert len(d["classes"]) == 10
    # shuffled, not sorted by label: the first 100 labels are mixed
    assert len(set(d["y_train"][:100].tolist())) == 10
    prov = json.loads(d["provenance"])
    assert prov["seed"] == 0 and len(prov["source_sha256"]) == 64
    assert (prov["train_count"], prov["test_count"]) == (n_train, n_test)


def test_mini_sizes_on_disk():
    from autonorm.data import dataset_path

    total = sum(dataset_path(n).stat().st_size for n in ("mnist_mini", "cifar10_mini"))
    assert total < 10.5e6


def test_constants():
    assert set(DATASET_NAMES) == {"mnist", "cifar10", "mnist_mini", "cifar10_mini"}
    assert DATASET_STATS["mnist"]["mean"] == (0.1307,) * 3
    assert DATASET_STATS["cifar10_mini"] == DATASET_STATS["cifar10"]
    assert DATASET_STATS["mnist_mini"]["std"] == (0.3081,) * 3


# --------------------------------------------------------------------------- npz load/serve
def test_handmade_mnist_like_is_padded_and_repeated(tmp_path):
    arrays = make_arrays(n_train=12, n_test=6, hw=28, c=1)
    arrays["x_train"][:] = np.maximum(arrays["x_train"], 1)  # no zero pixels inside the image
    path = write_npz_atomic(tmp_path / "mnist.npz", **arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["mnist.npz"]  # no temp file left behind
    d = load_npz(path, "mnist")
    assert d["x_train"].shape == (12, 28, 28, 1)
    assert d["classes"] == [f"c{i}" for i in range(10)]
    x = to_served_format(d["x_train"])
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.uint8
    assert int(x[:, :, 0, 0].abs().sum()) == 0  # pixel (0, 0) is zero padding
    assert int(x[:, :, :2].sum()) == 0 and int(x[:, :, :, 30:].sum()) == 0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(arrays["x_train"][..., 0]))


def test_handmade_rgb32_served_channels_first(tmp_path):
    arrays = make_arrays(n_train=8, n_test=4)
    d = load_npz(write_npz_atomic(tmp_path / "a.npz", **arrays))
    x = to_served_format(d["x_train"])
    assert x.shape == (8, 3, 32, 32)
    assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(arrays["x_train"]))


def test_unsupported_image_size_raises():
    with pytest.raises(DataError, match="30x30"):
        to_served_format(np.zeros((2, 30, 30, 3), np.uint8), "odd")


def test_write_npz_atomic_is_byte_deterministic(tmp_path):
    arrays = make_arrays(n_train=10, n_test=5)
    a = write_npz_atomic(tmp_path / "a.npz", **arrays).read_bytes()
    b = write_npz_atomic(tmp_path / "b.npz", **arrays).read_bytes()
    assert a == b
    with np.load(tmp_path / "a.npz") as f:  # plain numpy can read it, no pickle
        assert np.array_equal(f["x_train"], arrays["x_train"])


def test_corrupt_and_truncated_files_raise(tmp_path):
    good = write_npz_atomic(tmp_path / "good.npz", **make_arrays()).read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file" * 10)
    for path in (trunc, garbage):
        with pytest.raises(DataError) as exc:
            load_npz(path, "cifar10")
        msg = str(exc.value)
        assert str(path) in msg and "corrupt" in msg and "delete" in msg and "data.root" in msg


def test_damaged_member_raises(tmp_path):
    """A zip whose central directory is intact but whose data bytes are damaged."""
    path = write_npz_atomic(tmp_path / "d.npz", **make_arrays(n_train=400))
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 3
    raw[mid : mid + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt"):
        load_npz(path, "cifar10")


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), r"'x_train'.*float32.*uint8"),
        (lambda a: a.update(x_train=a["x_train"][..., 0]), r"'x_train'.*shape"),
        (lambda a: a.update(x_test=a["x_test"][..., :2]), r"'x_test'.*shape"),
        (lambda a: a.update(y_train=a["y_train"] + 1), r"'y_train'.*labels in \[1, 10\].*\[0, 9\]"),
        (lambda a: a.update(y_test=a["y_test"] - 1), r"'y_test'.*outside"),
        (lambda a: a.update(y_train=a["y_train"].astype(np.float64)), r"'y_train'.*integer"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), r"'y_train'.*shape"),
        (lambda a: a.pop("y_test"), r"lacks the array\(s\) y_test"),
        (lambda a: a.update(x_test=a["x_test"][:, :16, :16]), r"'x_test'.*image shape"),
    ],
    ids=["dtype", "ndim", "channels", "label_hi", "label_lo", "label_dtype", "length", "missing", "hw"],
)
def test_invalid_contents_raise(tmp_path, mutate, needle):
    arrays = make_arrays()
    mutate(arrays)
    path = write_npz_atomic(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=needle) as exc:
        load_npz(path, "cifar10")
    assert str(path) in str(exc.value)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "none.npz")
    with pytest.raises(DataError, match="mnist, cifar10, mnist_mini, cifar10_mini"):
        resolve_dataset("imagenet", tmp_path)


# ------------------------------------------------------------------ missing data, no download
def _assert_actionable(msg: str, root: Path, name: str) -> None:
    assert str(root.resolve()) in msg or str(root.absolute()) in msg
    assert f"{name}.npz" in msg and "../shared/data" in msg  # fix 1: put the file there
    assert "torchvision" in msg and "network" in msg  # fix 2: go online and download


def test_download_failure_is_fast_and_actionable(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise OSError("simulated: network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    root = tmp_path / "data"
    t0 = time.monotonic()
    with pytest.raises(DataError) as exc:
        resolve_dataset("mnist", root)
    assert time.monotonic() - t0 < 20
    _assert_actionable(str(exc.value), root, "mnist")
    assert not (root / "mnist.npz").exists()


def test_download_disabled_and_unwritable_root(tmp_path):
    with pytest.raises(DataError, match="download") as exc:
        resolve_dataset("cifar10", tmp_path, download=False)
    _assert_actionable(str(exc.value), tmp_path, "cifar10")

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    root = blocker / "data"  # cannot be created: its parent is a file
    with pytest.raises(DataError, match="not writable") as exc:
        resolve_dataset("cifar10", root)
    _assert_actionable(str(exc.value), root, "cifar10")


def test_full_set_found_in_root_without_download(tmp_path, monkeypatch):
    import autonorm.data.download as download_mod

    def forbidden(*a, **k):
        raise AssertionError("torchvision must not be used when <root>/<name>.npz exists")

    monkeypatch.setattr(download_mod, "_torchvision_arrays", forbidden)
    write_npz_atomic(tmp_path / "mnist.npz", **make_arrays(n_train=30, n_test=10, hw=28, c=1))
    dm = ImageDataModule("mnist", root=str(tmp_path), batch_size=4, eval_batch_size=8, val_size=6)
    dm.setup()
    assert dm.train_x.shape == (24, 3, 32, 32) and dm.val_x.shape == (6, 3, 32, 32)
    assert dm.test_x.shape == (10, 3, 32, 32) and dm.test_x.dtype == torch.uint8
    assert dm.train_y.dtype == torch.int64 and dm.classes[0] == "c0" and dm.num_classes == 10


def test_torchvision_conversion_and_cache(tmp_path, monkeypatch):
    """When torchvision provides the data, it is converted and cached as <root>/<name>.npz."""
    import torchvision

    class FakeCIFAR:
        classes = [f"k{i}" for i in range(10)]

        def __init__(self, root, train=True, download=False):
            n = 20 if train else 10
            self.data = np.full((n, 32, 32, 3), 7, np.uint8)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    d = resolve_dataset("cifar10", tmp_path)
    assert (tmp_path / "cifar10.npz").is_file()
    assert d["x_train"].shape == (20, 32, 32, 3) and d["classes"][3] == "k3"
    assert load_npz(tmp_path / "cifar10.npz")["y_test"].tolist() == [i % 10 for i in range(10)]


# ------------------------------------------------------------------------------ augmentation
def test_random_crop_matches_reference_and_is_deterministic():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(out, random_crop(x, 2, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, random_crop(x, 2, torch.Generator().manual_seed(2)))
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2))
    for i in range(16):  # every output is some 8x8 window of the zero-padded input
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i].float(), w) for w in windows)
    xf = x.float() / 255
    assert random_crop(xf, 2, torch.Generator().manual_seed(1)).dtype == torch.float32
    assert torch.equal(random_crop(x, 0), x)


def test_random_flip_per_sample():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half flipped
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------------------- datamodule
@pytest.fixture()
def indexed_root(tmp_path):
    write_npz_atomic(tmp_path / "cifar10.npz", **make_arrays(n_train=300, n_test=50))
    return str(tmp_path)


def test_val_split_seeded_and_disjoint(indexed_root):
    def split(seed, val_size=0.2, **kw):
        dm = ImageDataModule("cifar10", root=indexed_root, batch_size=8, val_size=val_size, seed=seed, **kw)
        dm.setup()
        return dm

    a, b, c = split(0), split(0), split(1)
    assert len(a.val_x) == 60 and len(a.train_x) == 240
    ids_tr, ids_val = image_ids(a.train_x), image_ids(a.val_x)
    assert ids_tr.isdisjoint(ids_val) and ids_tr | ids_val == set(range(300))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert image_ids(c.val_x) != ids_val
    sub = split(0, train_subset=50)  # subset: prefix of the shuffled split; val unchanged
    assert torch.equal(sub.train_x, a.train_x[:50]) and torch.equal(sub.val_x, a.val_x)
    assert len(split(0, val_size=25).val_x) == 25


def test_eval_loaders_fixed_order_no_augmentation(indexed_root):
    dm = ImageDataModule("cifar10", root=indexed_root, batch_size=8, eval_batch_size=16, val_size=40,
                         crop_padding=4, flip=True)
    dm.setup()
    for loader, x, y in ((dm.val_dataloader(), dm.val_x, dm.val_y), (dm.test_dataloader(), dm.test_x, dm.test_y)):
        assert isinstance(loader, BatchLoader) and len(loader) == -(-len(x) // 16)
        xs, ys = zip(*list(loader))
        assert torch.allclose(torch.cat(xs), dm.normalize(x.float() / 255), atol=1e-5)
        assert torch.equal(torch.cat(ys), y)
    assert len(dm.train_dataloader()) == 260 // 8  # drop_last


def test_training_batches_augmented_and_deterministic(indexed_root):
    def batches(epoch=None, **kw):
        dm = ImageDataModule("cifar10", root=indexed_root, batch_size=32, val_size=0, seed=3, **kw)
        loader = dm.train_dataloader()
        if epoch is not None:
            loader.set_epoch(epoch)
        return list(loader)

    plain, aug, aug2 = batches(), batches(crop_padding=4, flip=True), batches(crop_padding=4, flip=True)
    assert all(x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 for x, _ in aug)
    assert all(torch.equal(ya, yp) for (_, ya), (_, yp) in zip(aug, plain))  # same order
    assert not torch.allclose(aug[0][0], plain[0][0])  # images changed by crop/flip
    assert all(torch.equal(a[0], b[0]) for a, b in zip(aug, aug2))  # same seed, same epoch
    later = batches(epoch=1, crop_padding=4, flip=True)
    assert not torch.equal(later[0][1], aug[0][1])  # another epoch, another order


def test_epoch_advances_each_pass_and_state_dict_roundtrip(indexed_root):
    kw = dict(root=indexed_root, batch_size=16, val_size=0, crop_padding=2, flip=True)
    dm = ImageDataModule("cifar10", **kw)
    loader = dm.train_dataloader()
    it = iter(loader)  # creating the iterator alone does not consume an epoch
    assert dm.epoch == 0
    del it
    first = [y for _, y in loader]
    state = dm.state_dict()
    assert state["epoch"] == 1
    second = [(x, y) for x, y in loader]
    assert dm.state_dict()["epoch"] == 2
    assert not all(torch.equal(a, b) for a, (_, b) in zip(first, second))

    fresh = ImageDataModule("cifar10", **kw)
    fresh.load_state_dict(state)
    replay = list(fresh.train_dataloader())
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(second, replay))
    assert fresh.state_dict()["epoch"] == 2


def test_cifar_mini_normalized_statistics():
    dm = ImageDataModule("cifar10_mini", batch_size=500, val_size=250, seed=0)
    dm.setup()
    assert dm.train_x.shape == (2250, 3, 32, 32) and dm.val_x.shape == (250, 3, 32, 32)
    assert dm.test_x.shape == (500, 3, 32, 32) and dm.num_classes == 10
    assert dm.classes[0] == "airplane"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (500, 3, 32, 32) and y.dtype == torch.int64
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    assert bool((mean.abs() < 0.15).all()), mean
    assert bool(((std > 0.8) & (std < 1.2)).all()), std
    assert len(set(dm.test_y[:50].tolist())) >= 8  # test order is class-mixed


def test_mnist_mini_served_format():
    dm = ImageDataModule("mnist_mini", batch_size=64, val_size=500)
    dm.setup()
    assert dm.train_x.shape == (4500, 3, 32, 32) and dm.train_x.dtype == torch.uint8
    assert int(dm.train_x[:, :, :2, :].sum()) == 0  # padding rows
    assert torch.equal(dm.train_x[:, 0], dm.train_x[:, 2])
    assert torch.allclose(dm.mean, torch.tensor([0.1307] * 3))


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"name": "svhn"}, "name"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -1}, "eval_batch_size"),
        ({"val_size": 1.5}, "val_size"),
        ({"val_size": -3}, "val_size"),
        ({"seed": -1}, "seed"),
        ({"crop_padding": -4}, "crop_padding"),
        ({"train_subset": 0}, "train_subset"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_constructor_validation(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        ImageDataModule(**{"name": "mnist_mini", **kwargs})


def test_setup_validation(indexed_root):
    with pytest.raises(ValueError, match="val_size"):
        ImageDataModule("cifar10", root=indexed_root, val_size=300).setup()
    with pytest.raises(ValueError, match="batch_size"):
        ImageDataModule("cifar10", root=indexed_root, val_size=0, train_subset=10, batch_size=32).setup()


def test_lightning_fit_and_resume_keep_data_order(indexed_root, tmp_path):
    import pytorch_lightning as pl

    seen: list[list[int]] = []

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 32 * 32, 10)

        def training_step(self, batch, i):
            x, y = batch
            if i == 0:
                seen.append(y.tolist())
            return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val/loss", torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def trainer(epochs):
        return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)

    def dm():
        return ImageDataModule("cifar10", root=indexed_root, batch_size=32, val_size=40, crop_padding=4, flip=True)

    trainer(3).fit(Tiny(), datamodule=dm())
    straight, seen[:] = list(seen), []
    t = trainer(2)
    t.fit(Tiny(), datamodule=dm())
    t.save_checkpoint(tmp_path / "mid.ckpt")
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert ckpt["ImageDataModule"]["epoch"] == 2
    trainer(3).fit(Tiny(), datamodule=dm(), ckpt_path=tmp_path / "mid.ckpt")
    assert seen == straight and len(seen) == 3 and seen[0] != seen[1]


# ---------------------------------------------------------------------------------- real data
@pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(), reason="shared mnist.npz not present")
def test_real_mnist_from_shared_root():
    d = resolve_dataset("mnist", SHARED, download=False)
    assert d["x_train"].shape == (60000, 28, 28, 1) and d["x_test"].shape == (10000, 28, 28, 1)
    assert d["y_train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(d["y_train"]).tolist()[:3] == [5923, 6742, 5958]
    assert to_served_format(d["x_test"][:4]).shape == (4, 3, 32, 32)


def test_data_configs_take_their_normalisation_from_dataset_stats() -> None:
    """``conf/data/*.yaml`` ask ``${data_stats:...}`` for mean and std: one home for the constants."""
    from autonorm.configs import load_group
    from autonorm.data.npz import DATASET_NAMES
    from omegaconf import OmegaConf

    for name in DATASET_NAMES:
        node = load_group("data", name)
        raw = OmegaConf.to_container(node)  # the rest of the node interpolates keys of the whole config
        assert raw["mean"] == f"${{data_stats:{name},mean}}"
        got = OmegaConf.to_container(OmegaConf.create({k: raw[k] for k in ("mean", "std")}), resolve=True)
        assert got == {k: list(DATASET_STATS[name][k]) for k in ("mean", "std")}
    with pytest.raises(Exception, match="data_stats takes one of"):
        OmegaConf.to_container(OmegaConf.create({"m": "${data_stats:svhn,mean}"}), resolve=True)
