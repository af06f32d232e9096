"""Checkpoints load with ``weights_only=True``: a crafted pickle is refused, its code never runs."""

import os
import pickle

import numpy as np
import pytest
import torch

from vae_kernels.app import cli
from vae_kernels.app.data import load_mnist_5k
from vae_kernels.app.train import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    TrainConfig,
    load_checkpoint,
    train,
)


class RunsCode:
    """Unpickling this calls ``os.system``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    mnist = load_mnist_5k()
    root = tmp_path_factory.mktemp("checkpoint")
    data = root / "small.npz"
    np.savez(
        data,
        x_train=(mnist.train_images[:128, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:20, 0] * 255).byte().numpy(),
    )
    out = root / "run"
    train(TrainConfig(epochs=1, batch_size=64, data=str(data), output_dir=str(out), quiet=True))
    return out


def test_checkpoint_holds_only_plain_data(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT
    assert set(state["model_state"]) and all(
        isinstance(v, torch.Tensor) for v in state["model_state"].values()
    )
    # A run directory is taken for the checkpoint inside it.
    assert load_checkpoint(run_dir)["epoch"] == 1


def crafted(path, marker, zip_format=True):
    payload = {"format": CHECKPOINT_FORMAT, "model_state": {}, "evil": RunsCode(marker)}
    if zip_format:
        torch.save(payload, path)
    else:  # a bare pickle, as torch.load also accepts
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "pickle"])
def test_crafted_checkpoint_is_refused_without_running_code(tmp_path, zip_format):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    crafted(path, marker, zip_format)
    with pytest.raises(CheckpointError, match="refused to load") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)
    assert "posix.system" in str(error.value) or "Unsupported" in str(error.value)
    assert not marker.exists()


def test_cli_refuses_crafted_checkpoint_in_one_line(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    run = tmp_path / "run"
    run.mkdir()
    crafted(run / "checkpoint.pt", marker)
    for argv in (
        ["evaluate", str(run / "checkpoint.pt"), "--k", "2"],
        ["evaluate", str(run)],
        ["train", "-o", str(run), "--resume", "--epochs", "1", "--quiet"],
        ["train", "-o", str(tmp_path / "other"), "--resume", str(run / "checkpoint.pt")],
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "refused to load" in err, (argv, err)
        assert "Traceback" not in err
    assert not marker.exists()


def test_corrupt_and_foreign_files_get_one_line(tmp_path, capsys):
    (tmp_path / "bogus.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for name, message in (
        ("bogus.pt", "not a readable checkpoint"),
        ("foreign.pt", "not a vae_kernels checkpoint"),
    ):
        assert cli.main(["evaluate", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
