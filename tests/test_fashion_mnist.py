"""Fashion-MNIST: idx parsing, where the files are found, checksums, download, and the data set.

Every test works on tiny synthetic idx files (20 training and 10 test images, all ten classes)
whose checksums replace the official ones, with ``$HOME``, ``$JMSNAS_DATA`` and the system
folder pointed at empty temporary folders. ``urllib.request.urlopen`` refuses every URL that is
not on the loopback interface; downloads go through urllib to a ``ThreadingHTTPServer`` the
test starts on 127.0.0.1. Only ``test_real_files`` reads the real data, and it is skipped where
``/usr/share/datasets/fashion-mnist`` is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

import models.data as data_mod
import models.fashion_mnist as fm
from models.data import DatasetNotFoundError, load_dataset, resolve_dataset
from models.fashion_mnist import FashionMNISTNotFoundError, find_fashion_mnist, load_raw, parse_idx

REAL_FILES = dict(fm.FILES)  # the official checksums, before any test replaces them
REAL_SYSTEM_DIR = fm.SYSTEM_DIR
NAMES = tuple(REAL_FILES)  # train images, train labels, test images, test labels
PLAIN = "t10k-labels-idx1-ubyte"  # the one file written uncompressed
_REAL_URLOPEN = urllib.request.urlopen


def idx_bytes(a: npt.NDArray[Any]) -> bytes:
    """An unsigned-byte idx file holding ``a``."""
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(n.to_bytes(4, "big") for n in a.shape)
    return header + np.ascontiguousarray(a, dtype=np.uint8).tobytes()


def _synthetic() -> dict[str, npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(7)
    # Image i is brighter by 6 * i, so the training and validation parts differ in mean.
    x_train = rng.integers(0, 100, (20, 28, 28)) + 6 * np.arange(20)[:, None, None]
    return {
        "train-images-idx3-ubyte": x_train.astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(10)[::-1].astype(np.uint8),
    }


ARRAYS = _synthetic()
RAW = {name: idx_bytes(a) for name, a in ARRAYS.items()}
SHA256 = {name: hashlib.sha256(raw).hexdigest() for name, raw in RAW.items()}


def write_files(folder: Path, names: tuple[str, ...] = NAMES,
                raw: dict[str, bytes] | None = None) -> Path:
    """The synthetic files in ``folder``: ``.gz`` except :data:`PLAIN`."""
    raw = RAW if raw is None else raw
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == PLAIN:
            (folder / name).write_bytes(raw[name])
        else:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw[name], mtime=0))
    return folder


def write_gz(folder: Path, raw: dict[str, bytes] | None = None) -> Path:
    """All four files as ``.gz``, the layout of the official mirror."""
    raw = RAW if raw is None else raw
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw[name], mtime=0))
    return folder


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def one_line(e: BaseException | str) -> str:
    """The message, checked to be one line."""
    message = str(e)
    assert "\n" not in message, message
    return message


@dataclass
class Home:
    home: Path
    cache: Path  # what user_cache_dir() gives under the patched $HOME
    system: Path  # the patched SYSTEM_DIR (absent until a test creates it)


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Home]:
    """No real folder, checksum, network or cached array reaches a test."""

    def loopback_only(url: Any, *args: Any, **kwargs: Any) -> Any:
        full = url.full_url if isinstance(url, urllib.request.Request) else str(url)
        if urllib.parse.urlsplit(full).hostname not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to open a non-loopback URL: {full}")
        return _REAL_URLOPEN(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", loopback_only)
    monkeypatch.setenv("no_proxy", "*")  # loopback requests must not go through a proxy
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fm, "FILES", dict(SHA256))
    fm._load_folder.cache_clear()
    yield Home(home, home / ".cache" / "jmsnas" / "fashion-mnist", tmp_path / "system")
    fm._load_folder.cache_clear()


@dataclass
class Server:
    folder: Path  # what the server serves
    url: str  # its base URL, ending in "/"
    requests: list[str]  # paths asked for, in order


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """An HTTP server on 127.0.0.1 serving an (initially empty) folder, counting requests."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Server(folder, f"http://127.0.0.1:{httpd.server_address[1]}/", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


# -- parse_idx -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_parse_idx_round_trips(name: str) -> None:
    """Catches a wrong header length, byte order or shape in parse_idx."""
    a = parse_idx(RAW[name])
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, ARRAYS[name])


GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(("raw", "problem"), [
    (b"\x01" + GOOD[1:], "two zero bytes"),
    (b"", "two zero bytes"),
    (GOOD[:2] + b"\x0d" + GOOD[3:], "idx type 0x0d is not unsigned byte"),
    (GOOD[:4] + GOOD[4:8], "cut short"),  # ndim 2, one size only
    (GOOD[:3] + b"\x00", "cut short"),  # zero dimensions
    (GOOD[:-1], "truncated"),
    (GOOD + b"\x00", "truncated or corrupt"),
], ids=["magic", "empty", "type", "header", "ndim0", "body-short", "body-long"])
def test_parse_idx_refuses(raw: bytes, problem: str) -> None:
    """Catches parse_idx accepting a malformed file, or a message that hides what is wrong."""
    with pytest.raises(ValueError, match=problem) as err:
        parse_idx(raw, "where.idx")
    assert one_line(err.value).startswith("where.idx: ")


# -- where the files are found ---------------------------------------------------------------


def test_search_folders_order(isolated: Home, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a changed lookup order, or an empty $JMSNAS_DATA read as the working folder."""
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "env"))
    assert fm.search_folders(tmp_path / "d") == [
        tmp_path / "d", tmp_path / "d" / "fashion-mnist",
        tmp_path / "env", tmp_path / "env" / "fashion-mnist",
        isolated.cache, isolated.system,
    ]
    monkeypatch.setenv(fm.ENV_VAR, "")
    assert fm.search_folders() == [isolated.cache, isolated.system]


def test_lookup_order(isolated: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a folder found out of order, or one with only 3 of the 4 files counted."""
    data_dir = write_files(tmp_path / "data")
    env_dir = write_files(tmp_path / "env")
    write_files(isolated.cache)
    write_files(isolated.system)
    monkeypatch.setenv(fm.ENV_VAR, str(env_dir))

    assert find_fashion_mnist(data_dir) == data_dir
    (data_dir / f"{NAMES[0]}.gz").unlink()  # 3 of 4: does not count
    assert find_fashion_mnist(data_dir) == env_dir
    write_files(data_dir / "fashion-mnist")  # a fashion-mnist subfolder of data_dir counts
    assert find_fashion_mnist(data_dir) == data_dir / "fashion-mnist"
    assert find_fashion_mnist() == env_dir
    monkeypatch.delenv(fm.ENV_VAR)
    assert find_fashion_mnist() == isolated.cache
    (isolated.cache / PLAIN).unlink()
    assert find_fashion_mnist() == isolated.system
    (isolated.system / f"{NAMES[2]}.gz").unlink()
    assert find_fashion_mnist() is None


def test_load_raw_reads_the_first_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches load_raw reading another folder than find_fashion_mnist picks, or wrong arrays."""
    data_dir = write_files(tmp_path / "data")
    other = {**RAW, "train-labels-idx1-ubyte": idx_bytes(np.zeros(20, dtype=np.uint8))}
    env_dir = write_files(tmp_path / "env", raw=other)  # would fail its checksum if read
    monkeypatch.setenv(fm.ENV_VAR, str(env_dir))

    x_train, y_train, x_test, y_test = load_raw(data_dir)
    assert x_train.shape == (20, 1, 28, 28) and x_test.shape == (10, 1, 28, 28)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.dtype == y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0], ARRAYS["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_train, ARRAYS["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test[:, 0], ARRAYS["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, ARRAYS["t10k-labels-idx1-ubyte"])
    assert not any(a.flags.writeable for a in (x_train, y_train, x_test, y_test))  # cached


# -- refusing bad files ----------------------------------------------------------------------


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    """Catches a valid idx file with foreign content accepted, or a vague or multi-line message."""
    labels = ARRAYS["train-labels-idx1-ubyte"].copy()
    labels[0] = 9
    folder = write_files(tmp_path / "data",
                         raw={**RAW, "train-labels-idx1-ubyte": idx_bytes(labels)})
    with pytest.raises(ValueError, match="SHA-256") as err:
        load_raw(folder)
    assert str(folder / "train-labels-idx1-ubyte.gz") in one_line(err.value)


def test_truncated_gz_is_refused(tmp_path: Path) -> None:
    """Catches EOFError from a cut-off .gz escaping instead of a one-line ValueError."""
    folder = write_files(tmp_path / "data")
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="cannot read") as err:
        load_raw(folder)
    assert str(path) in one_line(err.value)


def test_damaged_gz_is_refused(tmp_path: Path) -> None:
    """Catches zlib.error from a .gz with a damaged deflate stream escaping as a non-ValueError."""
    folder = write_files(tmp_path / "data")
    path = folder / "t10k-images-idx3-ubyte.gz"
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 0xFF  # the deflate stream's first byte, after the 10-byte gzip header
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="cannot read") as err:
        load_raw(folder)
    assert str(path) in one_line(err.value)


def test_images_and_labels_must_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches 20 images paired with 19 labels without complaint."""
    short = idx_bytes(ARRAYS["train-labels-idx1-ubyte"][:19])
    monkeypatch.setitem(fm.FILES, "train-labels-idx1-ubyte", hashlib.sha256(short).hexdigest())
    folder = write_files(tmp_path / "data", raw={**RAW, "train-labels-idx1-ubyte": short})
    with pytest.raises(ValueError, match="disagree"):
        load_raw(folder)


def test_not_found_without_download(tmp_path: Path) -> None:
    """Catches a missing data set reported without the ways to provide it, or over many lines."""
    with pytest.raises(FashionMNISTNotFoundError) as err:
        load_raw(tmp_path / "nowhere", download=False)
    message = one_line(err.value)
    for needed in ("apt-get install dataset-fashion-mnist", "--data-dir", "JMSNAS_DATA",
                   str(tmp_path / "nowhere")):
        assert needed in message


# -- download --------------------------------------------------------------------------------


def test_download_fetches_once(isolated: Home, server: Server,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a download not stored in the user cache, wrong arrays, or a fetch on every call."""
    write_gz(server.folder)
    monkeypatch.setattr(fm, "BASE_URL", server.url)

    x_train, y_train, x_test, y_test = load_raw(download=True)
    assert sorted(server.requests) == sorted(f"/{name}.gz" for name in NAMES)
    assert sorted(p.name for p in isolated.cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    np.testing.assert_array_equal(x_train[:, 0], ARRAYS["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_train, ARRAYS["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test[:, 0], ARRAYS["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(y_test, ARRAYS["t10k-labels-idx1-ubyte"])

    fm._load_folder.cache_clear()  # a new process: read from disk, not from memory
    again = load_raw(download=True)
    assert len(server.requests) == 4
    np.testing.assert_array_equal(again[0], x_train)


def test_corrupt_download_leaves_nothing(isolated: Home, server: Server,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches an unchecked download moved into the cache, or a temporary folder left behind."""
    images = ARRAYS["train-images-idx3-ubyte"].copy()
    images[0, 0, 0] ^= 1  # a valid idx file, not the expected one
    write_gz(server.folder, raw={**RAW, "train-images-idx3-ubyte": idx_bytes(images)})
    monkeypatch.setattr(fm, "BASE_URL", server.url)

    with pytest.raises(ValueError, match="SHA-256") as err:
        load_raw(download=True)
    assert "train-images-idx3-ubyte" in one_line(err.value)
    assert list(isolated.cache.iterdir()) == []


def test_download_resumes_with_missing_files(isolated: Home, server: Server,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches checked files discarded after a later one fails, or fetched again on a retry."""
    labels = ARRAYS["t10k-labels-idx1-ubyte"][::-1]
    write_gz(server.folder, raw={**RAW, "t10k-labels-idx1-ubyte": idx_bytes(labels)})
    monkeypatch.setattr(fm, "BASE_URL", server.url)
    with pytest.raises(ValueError, match="SHA-256"):
        load_raw(download=True)
    kept = sorted(p.name for p in isolated.cache.iterdir())
    assert kept == sorted(f"{name}.gz" for name in NAMES[:3])

    write_gz(server.folder)  # the mirror is fixed
    server.requests.clear()
    load_raw(download=True)
    assert server.requests == ["/t10k-labels-idx1-ubyte.gz"]


def test_download_from_closed_port(isolated: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a refused connection escaping as URLError instead of a one-line not-found error."""
    url = closed_port_url()
    monkeypatch.setattr(fm, "BASE_URL", url)
    with pytest.raises(FashionMNISTNotFoundError) as err:
        load_raw(download=True)
    message = one_line(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and url in message
    assert not isolated.cache.exists() or not any(isolated.cache.iterdir())


def test_download_of_missing_file(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches an HTTP 404 escaping as HTTPError instead of a one-line not-found error."""
    monkeypatch.setattr(fm, "BASE_URL", server.url)  # serves an empty folder
    with pytest.raises(FashionMNISTNotFoundError, match="404") as err:
        load_raw(download=True)
    one_line(err.value)


# -- models.data -----------------------------------------------------------------------------


def test_load_dataset(tmp_path: Path) -> None:
    """Catches a lost test set, an unstratified split or statistics taken beyond the train part."""
    folder = write_files(tmp_path / "data")
    ds = load_dataset("fashion-mnist", root=folder, seed=3)
    assert ds.name == "fashion-mnist" and ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (ds.x_train.shape[0], ds.x_val.shape[0]) == (10, 10)  # one of each class's two
    assert torch.equal(torch.bincount(ds.y_val, minlength=10), torch.ones(10, dtype=torch.int64))
    assert ds.x_test is not None and ds.y_test is not None
    assert ds.x_test.shape == (10, 1, 28, 28) and ds.x_test.dtype == torch.float32
    assert torch.equal(ds.y_test, torch.from_numpy(ARRAYS["t10k-labels-idx1-ubyte"].astype(int)))

    x = ARRAYS["train-images-idx3-ubyte"][:, None].astype(np.float64) / 255.0
    train_idx, val_idx = data_mod._stratified_split(
        ARRAYS["train-labels-idx1-ubyte"].astype(np.int64), 0.2, 3)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x_test = ARRAYS["t10k-images-idx3-ubyte"][:, None] / 255.0
    wrong = (x_test - x.mean()) / x.std()  # statistics of train and val parts together
    assert not np.allclose(wrong, (x_test - mean) / std, atol=1e-3)  # the fixture tells them apart
    for got, raw in ((ds.x_train, x[train_idx]), (ds.x_val, x[val_idx]), (ds.x_test, x_test)):
        np.testing.assert_allclose(got.numpy(), (raw - mean) / std, atol=1e-5)


def test_final_trains_on_all_and_scores_on_test(tmp_path: Path) -> None:
    """Catches final() dropping the validation part or scoring on anything but the test set."""
    ds = load_dataset("fashion-mnist", root=write_files(tmp_path / "data"))
    final = ds.final()
    assert final.x_train.shape[0] == 20
    assert ds.x_test is not None and ds.y_test is not None
    assert torch.equal(final.x_val, ds.x_test) and torch.equal(final.y_val, ds.y_test)
    assert torch.equal(final.x_train, torch.cat([ds.x_train, ds.x_val]))


def test_load_dataset_not_found(tmp_path: Path) -> None:
    """Catches FashionMNISTNotFoundError not turned into a one-line DatasetNotFoundError."""
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    one_line(e.value)


def test_resolve_auto_finds_fashion_mnist(tmp_path: Path) -> None:
    """Catches auto falling back although Fashion-MNIST is on disk."""
    name, reason = resolve_dataset("auto", write_files(tmp_path / "data"))
    assert name == "fashion-mnist"
    one_line(reason)


def test_resolve_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches auto raising (or hanging) instead of falling back when the download fails."""
    monkeypatch.setattr(fm, "BASE_URL", closed_port_url())
    name, reason = resolve_dataset("auto")  # download=True by default
    assert name == "mnist5k"
    assert "Fashion-MNIST" in reason and "apt-get install" in reason
    one_line(reason)


def test_resolve_auto_download_flag(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches resolve_dataset ignoring download: fetching without leave, or not with it."""
    write_gz(server.folder)
    monkeypatch.setattr(fm, "BASE_URL", server.url)
    assert resolve_dataset("auto", download=False)[0] == "mnist5k"
    assert server.requests == []
    assert resolve_dataset("auto", download=True)[0] == "fashion-mnist"
    assert len(server.requests) == 4


def test_resolve_explicit_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Catches a missing explicit fashion-mnist silently replaced, or an unknown name accepted."""
    monkeypatch.setattr(fm, "BASE_URL", closed_port_url())
    with pytest.raises(DatasetNotFoundError):
        resolve_dataset("fashion-mnist")
    with pytest.raises(DatasetNotFoundError):
        resolve_dataset("fashion-mnist", tmp_path, download=False)
    assert resolve_dataset("digits")[0] == "digits"
    with pytest.raises(ValueError, match="fashion-mnist"):
        resolve_dataset("fashion_mnist")


# -- the real files --------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_SYSTEM_DIR.is_dir(), reason=f"{REAL_SYSTEM_DIR} is not installed")
def test_real_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches wrong official checksums, shapes or class counts, or a broken default lookup."""
    monkeypatch.setattr(fm, "FILES", REAL_FILES)
    monkeypatch.setattr(fm, "SYSTEM_DIR", REAL_SYSTEM_DIR)
    assert find_fashion_mnist() == REAL_SYSTEM_DIR
    x_train, y_train, x_test, y_test = load_raw()
    assert x_train.shape == (60_000, 1, 28, 28) and x_test.shape == (10_000, 1, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10

    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape[0] + ds.x_val.shape[0] == 60_000
    assert torch.bincount(ds.y_val).tolist() == [1200] * 10  # stratified, val_fraction 0.2
    assert ds.x_test is not None and ds.y_test is not None
    assert ds.x_test.shape == (10_000, 1, 28, 28)
    assert torch.equal(ds.y_test, torch.from_numpy(y_test.copy()))
    final = ds.final()
    assert final.x_train.shape[0] == 60_000
    assert torch.equal(final.x_val, ds.x_test) and torch.equal(final.y_val, ds.y_test)


def test_resolve_auto_falls_back_on_a_bad_download(isolated: Home, server: Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches auto crashing when the download arrives but is not the data (a captive portal's
    page): it falls back to mnist5k, and an explicit request says which file was wrong."""
    for name in fm.FILES:
        (server.folder / f"{name}.gz").write_bytes(b"<html>log in to the hotel wifi</html>")
    monkeypatch.setattr(fm, "BASE_URL", server.url)
    name, reason = resolve_dataset("auto")
    assert name == "mnist5k" and "not the official file" in reason
    one_line(reason)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        resolve_dataset("fashion-mnist")
    assert list(isolated.cache.iterdir()) == []
