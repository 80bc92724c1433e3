"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): the four official idx files, found or fetched.

The files are looked up, in this order, in

1. the folder given by the caller (the command line's ``--data-dir`` sets ``JMSNAS_DATA``),
2. the folder named by the ``JMSNAS_DATA`` environment variable,
3. the user cache ``~/.cache/jmsnas/fashion-mnist``,
4. ``/usr/share/datasets/fashion-mnist`` (Debian's package ``dataset-fashion-mnist``),

in each folder as ``NAME`` or ``NAME.gz``, directly or in a ``fashion-mnist`` subfolder. A folder
counts only when it holds all four files. With ``download=True`` and no folder holding them, the
official ``.gz`` files are fetched once into the user cache, with a progress bar.

Every file is checked against the SHA-256 of its *decompressed* bytes (Debian recompresses the
archives, so only those can match; see :data:`FILES` for where the hashes come from); a corrupt,
truncated or foreign file is refused with one line naming it.

The idx format (LeCun et al., "THE MNIST DATABASE"): a big-endian header of two zero bytes, a
type code (0x08 = unsigned byte), the number of dimensions, one 32-bit size per dimension, then
the values in row-major order.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import shutil
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FILES",
    "FashionMNISTNotFoundError",
    "find_fashion_mnist",
    "load_raw",
    "parse_idx",
    "search_folders",
]

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""The official mirror named in the data set's README."""

FILES: dict[str, str] = {
    # file: SHA-256 of the decompressed idx bytes, computed from Debian's package
    # dataset-fashion-mnist 0.0~git20200523 (its .gz files are recompressed, so the official
    # .gz MD5s do not apply to it). Not checked against the official archives, which the machine
    # that computed them could not reach; sizes and class counts (6,000 / 1,000 per class) match.
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
ENV_VAR = "JMSNAS_DATA"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 30.0

UInt8Array = npt.NDArray[np.uint8]


class FashionMNISTNotFoundError(FileNotFoundError):
    """No folder holds the four files and they could not (or may not) be downloaded."""


def user_cache_dir() -> Path:
    return Path.home() / ".cache" / "jmsnas" / "fashion-mnist"


def search_folders(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders looked in, in order (see the module docstring)."""
    folders: list[Path] = []
    for base in (data_dir, os.environ.get(ENV_VAR) or None):
        if base is not None:
            folders += [Path(base).expanduser(), Path(base).expanduser() / "fashion-mnist"]
    return [*folders, user_cache_dir(), SYSTEM_DIR]


def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder of :func:`search_folders` that holds all four files, or None."""
    for folder in search_folders(data_dir):
        if all(_file_in(folder, name) is not None for name in FILES):
            return folder
    return None


def _how_to_provide(data_dir: str | os.PathLike[str] | None) -> str:
    given = f"{data_dir} (--data-dir), " if data_dir is not None else ""
    return (f"Fashion-MNIST not found in {given}${ENV_VAR}, {user_cache_dir()} or {SYSTEM_DIR}; "
            f"provide it by 'apt-get install dataset-fashion-mnist', by putting the four idx "
            f"files in a folder named by --data-dir or ${ENV_VAR}, or by a download from "
            f"{BASE_URL} (needs internet)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # truncated: EOFError; damaged: zlib.error
        raise ValueError(f"{path}: cannot read ({e}); delete it and provide the file again"
                         ) from None


def parse_idx(raw: bytes, where: str = "idx data") -> UInt8Array:
    """An unsigned-byte idx file's values as an array of the shape its header gives."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{where}: not an idx file (it must start with two zero bytes)")
    if raw[2] != 0x08:
        raise ValueError(f"{where}: idx type 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{where}: idx header with {ndim} dimensions is cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise ValueError(f"{where}: idx header says {shape} ({expected} bytes), the file has "
                         f"{len(raw)} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _checked(path: Path, name: str) -> UInt8Array:
    raw = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name]:
        raise ValueError(f"{path}: SHA-256 {digest[:16]}... is not that of the official {name} "
                         f"({FILES[name][:16]}...): corrupt or not Fashion-MNIST; delete it and "
                         f"provide the file again")
    return parse_idx(raw, str(path))


def _download(dest: Path) -> None:
    """Fetch the four ``.gz`` files into ``dest``; each is checked before it is moved in, so
    ``dest`` never holds a partial or unchecked file."""
    from tqdm import tqdm

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        for name in FILES:
            if _file_in(dest, name) is not None:
                continue
            url = f"{BASE_URL}{name}.gz"
            part = Path(tmp) / f"{name}.gz"
            try:
                with (urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
                      part.open("wb") as out,
                      tqdm(total=int(response.headers.get("Content-Length") or 0) or None,
                           unit="B", unit_scale=True, desc=f"{name}.gz", leave=False) as bar):
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
            except OSError as e:  # URLError and timeouts are OSErrors
                raise OSError(f"download of {url} failed: {e}") from None
            try:
                _checked(part, name)
            except ValueError as e:
                raise ValueError(f"download of {url} is not the official file: {e}") from None
            shutil.move(str(part), str(dest / f"{name}.gz"))


def load_raw(data_dir: str | os.PathLike[str] | None = None, *, download: bool = False
             ) -> tuple[UInt8Array, npt.NDArray[np.int64], UInt8Array, npt.NDArray[np.int64]]:
    """``(x_train, y_train, x_test, y_test)``: uint8 images ``(N, 1, 28, 28)`` and int64 labels.

    Raises :class:`FashionMNISTNotFoundError` (one line naming the ways to provide the files)
    when no folder holds them and ``download`` is False or the download failed, and ValueError
    for a corrupt or truncated file.
    """
    folder = find_fashion_mnist(data_dir)
    if folder is None:
        if not download:
            raise FashionMNISTNotFoundError(_how_to_provide(data_dir))
        try:
            _download(user_cache_dir())
        except OSError as e:
            raise FashionMNISTNotFoundError(f"{_how_to_provide(data_dir)} ({e})") from None
        folder = user_cache_dir()
    return _load_folder(str(folder.resolve()))


@functools.lru_cache(maxsize=2)
def _load_folder(folder: str) -> tuple[Any, Any, Any, Any]:
    arrays = {}
    for name in FILES:
        path = _file_in(Path(folder), name)
        assert path is not None  # find_fashion_mnist checked
        arrays[name] = _checked(path, name)
    out = []
    for part in ("train", "t10k"):
        x = arrays[f"{part}-images-idx3-ubyte"]
        y = arrays[f"{part}-labels-idx1-ubyte"]
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{folder}: {part} images {x.shape} and labels {y.shape} disagree")
        x = x.reshape(-1, 1, x.shape[1], x.shape[2])
        y = y.astype(np.int64)
        x.flags.writeable = False
        y.flags.writeable = False
        out += [x, y]
    return out[0], out[1], out[2], out[3]
