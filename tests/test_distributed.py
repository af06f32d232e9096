"""Multi-process training: two CPU processes with gloo on localhost.

The workers are module-level functions so ``spawn`` can import them in the children.
"""

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vae_kernels as vk
from vae_kernels.app.data import binarize, load_dataset, load_mnist_5k
from vae_kernels.app.models import MLPVAE, build_model
from vae_kernels.app.train import TrainConfig, TrainingObjective, fixed_test_images, train, train_step

WORLD_SIZE = 2
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_worker_env(rank: int, port: int) -> None:
    # What torchrun sets; train() reads these.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)


def run_workers(worker, *args) -> None:
    """Run ``worker(rank, *args)`` in WORLD_SIZE spawned processes, failing after TIMEOUT_S."""
    context = mp.start_processes(
        worker, args=args, nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1.0):  # raises if a worker raised
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed workers still running after {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


def ddp_step_worker(rank: int, port: int, x: torch.Tensor, eps: torch.Tensor, out_dir: str) -> None:
    set_worker_env(rank, port)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.manual_seed(0)
        model = MLPVAE(backend="cpu")
        objective = torch.nn.parallel.DistributedDataParallel(TrainingObjective(model))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        share = x.shape[0] // WORLD_SIZE
        rows = slice(rank * share, (rank + 1) * share)  # this rank's half of the global batch
        terms = train_step(objective, optimizer, x[rows], 1.0, eps[rows])
        torch.save(
            {
                "grads": {n: p.grad for n, p in model.named_parameters()},
                "params": {n: p.detach() for n, p in model.named_parameters()},
                "objective": terms["objective"],
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_equals_one_single_process_step(tmp_path):
    mnist = load_mnist_5k()
    x = binarize(mnist.train_images[:64], torch.Generator().manual_seed(0))
    eps = torch.randn(64, 20, generator=torch.Generator().manual_seed(1))
    run_workers(ddp_step_worker, free_port(), x, eps, str(tmp_path))

    torch.manual_seed(0)
    model = MLPVAE(backend="cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    single = train_step(TrainingObjective(model), optimizer, x, 1.0, eps)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    # The global batch mean is the mean of the two half-batch means.
    torch.testing.assert_close(sum(r["objective"] for r in ranks) / WORLD_SIZE, single["objective"])
    for name, p in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(
                r["params"][name], p.detach(), rtol=1e-5, atol=1e-6, msg=name
            )
    # The step moved the weights: a no-op step would pass the comparisons above too.
    torch.manual_seed(0)
    initial = MLPVAE()
    assert not torch.allclose(initial.fc4.weight, model.fc4.weight)


def train_worker(rank: int, port: int, config: TrainConfig, result_file: str) -> None:
    set_worker_env(rank, port)
    try:
        result = train(config)
        Path(result_file + f".rank{rank}").write_text(json.dumps(result["history"]))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_train_with_two_processes(tmp_path):
    mnist = load_mnist_5k()
    data_path = tmp_path / "small.npz"
    np.savez(
        data_path,
        x_train=(mnist.train_images[:256, 0] * 255).byte().numpy(),
        x_test=(mnist.test_images[:61, 0] * 255).byte().numpy(),
    )  # odd: uneven test shards
    out = tmp_path / "run"
    config = TrainConfig(
        epochs=2, batch_size=64, data=str(data_path), output_dir=str(out), quiet=True
    )
    run_workers(train_worker, free_port(), config, str(tmp_path / "history"))

    histories = [json.loads((tmp_path / f"history.rank{r}").read_text()) for r in range(WORLD_SIZE)]
    for row0, row1 in zip(*histories):  # metrics reduced across ranks: every rank agrees
        row0.pop("epoch_seconds"), row1.pop("epoch_seconds")  # wall time is each rank's own
        assert row0 == row1
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "checkpoint.pt",
        "loss_curve.png",
        "metrics.csv",
        "metrics.json",
        "reconstructions.png",
        "samples.png",
    ]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and checkpoint["global_step"] == 2 * 4  # 256 / 64 steps
    assert histories[0][1]["train_neg_elbo"] < histories[0][0]["train_neg_elbo"]

    # The reduced test KL (analytic, no sampling noise) is the whole test set's KL: the
    # two shards' sums over 31 + 30 images divided by 61.
    model = build_model(checkpoint["model_config"], backend="cpu")
    model.load_state_dict(checkpoint["model_state"])
    test_images = fixed_test_images(load_dataset(str(data_path)), model.likelihood)
    with torch.no_grad():
        mu, logvar = model.encode(test_images)
        kl = float(vk.gaussian_kl(mu, logvar, reduction="batchmean"))
    assert histories[0][1]["test_kl"] == pytest.approx(kl, rel=1e-5)
