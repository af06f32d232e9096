"""Determinism and thread safety.

Per backend (documented here and in the report):

- ``cpu``: bitwise-equal values and gradients across runs and across
  ``torch.set_num_threads(1)`` / ``(2)``: each row is cut into 4096-element chunks at
  fixed positions, each chunk summed in one order, chunk sums added in index order
  (csrc/cpu/loss_loop.h); no float atomics. In-kernel noise is counter-based Philox.
- ``torch``: eager PyTorch; bitwise across runs with the same thread count (torch's CPU
  reductions may split differently for other thread counts, so not claimed there).

Calls from several Python threads at once give the single-threaded results bitwise (no
shared scratch state), and 10,000 forward+backward calls leave the resident memory
flat (no leak in the extension or its autograd glue).
"""

from __future__ import annotations

import gc
import os
import threading

import pytest
import torch

import vae_kernels as vk

requires_cpu = pytest.mark.skipif(
    "cpu" not in vk.available_backends(), reason="the C++ extension is not built"
)


def _inputs(dtype, seed=0, batch=48, dim=9000, latent=40):
    g = torch.Generator().manual_seed(seed)

    def n(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    def r(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64).to(dtype)

    return {"logits": n(batch, dim, scale=3), "probs": r(batch, dim) * 0.98 + 0.01,
            "x": r(batch, dim), "mean": n(batch, dim), "lv_full": n(batch, dim, scale=0.5),
            "lv_row": n(dim, scale=0.5), "mu": n(batch, latent), "logvar": n(batch, latent),
            "pm": n(latent), "plv": n(latent, scale=0.3), "eps": n(3, batch, latent)}


def _ops(backend):
    """name -> (function of the inputs returning an output, names of differentiable inputs)."""
    b = backend
    return {
        "kl": (lambda t, red: vk.gaussian_kl(t["mu"], t["logvar"], reduction=red, backend=b),
               ["mu", "logvar"]),
        "kl_prior": (lambda t, red: vk.gaussian_kl(t["mu"], t["logvar"], t["pm"], t["plv"],
                                                   reduction=red, backend=b),
                     ["mu", "logvar", "pm", "plv"]),
        "bce_logits": (lambda t, red: vk.bernoulli_nll(t["logits"], t["x"], reduction=red,
                                                       backend=b), ["logits", "x"]),
        "bce_probs": (lambda t, red: vk.bernoulli_nll(t["probs"], t["x"], logits=False,
                                                      reduction=red, backend=b), ["probs"]),
        "gaussian_learned": (lambda t, red: vk.gaussian_nll(t["mean"], t["x"], t["lv_full"],
                                                            reduction=red, backend=b),
                             ["mean", "x", "lv_full"]),
        "gaussian_row": (lambda t, red: vk.gaussian_nll(t["mean"], t["x"], t["lv_row"],
                                                        reduction=red, backend=b),
                         ["mean", "lv_row"]),
        "mse": (lambda t, red: vk.mse_loss(t["mean"], t["x"], reduction=red, backend=b),
                ["mean"]),
        "elbo": (lambda t, red: vk.elbo_loss(
            t["logits"], t["x"], t["mu"], t["logvar"], reduction="per_sample"
            if red == "per_sample" else "sum", backend=b), ["logits", "mu", "logvar"]),
        "reparameterize": (lambda t, red: vk.reparameterize(t["mu"], t["logvar"], t["eps"],
                                                            num_samples=3, backend=b),
                           ["mu", "logvar"]),
        "reparameterize_philox": (lambda t, red: vk.reparameterize(
            t["mu"], t["logvar"], num_samples=3, generator=torch.Generator().manual_seed(5),
            backend=b), ["mu", "logvar"]),
    }


def run_op(backend, op, dtype, reduction, seed=0, **sizes):
    fn, grad_names = _ops(backend)[op]
    t = {k: v.requires_grad_(k in grad_names) for k, v in _inputs(dtype, seed, **sizes).items()}
    out = fn(t, reduction)
    g = torch.Generator().manual_seed(11)
    up = (torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    grads = torch.autograd.grad(out, [t[k] for k in grad_names], up)
    return [out.detach(), *grads]


def assert_bitwise(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        # Bitwise, NaN included: compare the raw bits.
        assert torch.equal(x.view(torch.int16) if x.element_size() == 2 else
                           x.view(torch.int32 if x.element_size() == 4 else torch.int64),
                           y.view(torch.int16) if y.element_size() == 2 else
                           y.view(torch.int32 if y.element_size() == 4 else torch.int64)), \
            f"{what}: output {i} differs"


OPS = list(_ops("cpu"))


@requires_cpu
@pytest.mark.parametrize("reduction", ["sum", "per_sample", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_cpu_bitwise_across_runs_and_thread_counts(op, dtype, reduction):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = run_op("cpu", op, dtype, reduction)
        assert_bitwise(first, run_op("cpu", op, dtype, reduction), f"{op} second run")
        torch.set_num_threads(1)
        assert_bitwise(first, run_op("cpu", op, dtype, reduction), f"{op} with 1 thread")
    finally:
        torch.set_num_threads(before)


def test_torch_backend_bitwise_across_runs():
    for op in ("kl_prior", "bce_logits", "elbo"):
        first = run_op("torch", op, torch.float32, "sum")
        assert_bitwise(first, run_op("torch", op, torch.float32, "sum"), op)


@requires_cpu
def test_concurrent_python_threads_give_the_single_threaded_results():
    """Several Python threads call every op at once, each on its own inputs (different
    sizes, dtypes, reductions), many times; each result must equal, bitwise, the result
    of the same call made alone."""
    jobs = []
    for i, op in enumerate(OPS):
        dtype = (torch.float32, torch.bfloat16, torch.float64)[i % 3]
        reduction = ("sum", "per_sample", "none")[i % 3]
        sizes = dict(batch=8 + 3 * i, dim=500 + 1500 * i, latent=5 + i)
        jobs.append((op, dtype, reduction, i, sizes))
    expected = {job[0]: run_op("cpu", job[0], job[1], job[2], job[3], **job[4]) for job in jobs}
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def worker(offset):
        try:
            barrier.wait()
            for rep in range(6):
                for j in range(len(jobs)):
                    op, dtype, reduction, seed, sizes = jobs[(j + offset + rep) % len(jobs)]
                    got = run_op("cpu", op, dtype, reduction, seed, **sizes)
                    assert_bitwise(expected[op], got, f"thread {offset} {op}")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@requires_cpu
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_ten_thousand_forward_backward_calls_keep_memory_flat():
    """Every iteration allocates local-gradient buffers of 32 KiB and more per op; a leak
    of any of them (or of the autograd context holding them) would grow the resident
    set by hundreds of MiB over 10,000 calls."""
    g = torch.Generator().manual_seed(0)
    recon = torch.randn(32, 256, generator=g).requires_grad_()
    x = torch.rand(32, 256, generator=g)
    mu = torch.randn(32, 16, generator=g).requires_grad_()
    logvar = torch.randn(32, 16, generator=g).requires_grad_()
    lv = torch.zeros(256, requires_grad=True)

    def step(i):
        z = vk.reparameterize(mu, logvar, num_samples=2, backend="cpu")
        loss = vk.elbo_loss(recon, x, mu, logvar, backend="cpu")
        loss = loss + vk.gaussian_nll(recon, x, lv, reduction="mean", backend="cpu")
        loss = loss + vk.gaussian_kl(mu, logvar, mu.detach(), lv[:16].detach(),
                                     reduction="sum", backend="cpu") * 1e-3
        loss = loss + z.square().mean()
        if i % 2:
            loss.backward(retain_graph=True)  # the recomputing second backward, too
        loss.backward()

    for i in range(1000):  # warm up allocator caches
        step(i)
    gc.collect()
    before = _rss_bytes()
    for i in range(10_000):
        step(i)
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"
    assert recon.grad.isfinite().all()
