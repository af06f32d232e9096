"""The registered ops (vae_kernels/ops.py over csrc/): torch.library.opcheck on each op,
torch.compile(fullgraph=True), determinism across runs and thread counts, and the
double-backward guard."""

from __future__ import annotations

import pytest
import torch

import vae_kernels as vk
from vae_kernels import ops
from vae_kernels.schema import LossKind as K

from conftest import TOLERANCES, requires_cpu_backend

pytestmark = requires_cpu_backend

OPS = torch.ops.vae_kernels if ops.LIBRARY_ERROR is None else None


def _leaf(*shape, seed=0, scale=1.0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(requires_grad)


def opcheck_cases():
    mu, lv, pm, plv = (_leaf(4, 3, seed=i) for i in range(4))
    recon, logits = _leaf(4, 6, seed=5), _leaf(4, 6, seed=6, scale=3)
    x = torch.rand(4, 6, dtype=torch.float64)
    probs = (torch.rand(4, 6, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    seed = torch.tensor([1234])
    cases = {
        "reparameterize": [(mu, lv, torch.randn(2, 4, 3, dtype=torch.float64))],
        "reparameterize_backward": [(torch.randn(2, 4, 3, dtype=torch.float64), lv.detach(),
                                     torch.randn(2, 4, 3, dtype=torch.float64))],
        "reparameterize_philox": [(mu, lv, seed, 3)],
        "reparameterize_philox_backward": [(torch.randn(3, 4, 3, dtype=torch.float64), lv.detach(), seed)],
        "loss_backward": [(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64), 1),
                          (torch.randn(4, 6, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), 2),
                          # float16: float32 local gradients, a float16 result
                          (torch.randn(4, 6), torch.randn(4, dtype=torch.float16), 1)],
        "gaussian_kl": [(mu, lv, None, None, r, 1, [True, True, False, False]) for r in (0, 1, 2)]
        + [(mu, lv, pm, plv, 2, 4, [True, True, True, True])],
        "reconstruction_nll": [(logits, x, None, 0.0, K.BERNOULLI_LOGITS, r, 1, [True, False, False]) for r in (0, 1, 2)]
        + [(probs, x, None, 0.0, K.BERNOULLI_PROBS, 2, 24, [True, False, False]),
           (logits.detach().half().requires_grad_(), x.half(), None, 0.0, K.BERNOULLI_LOGITS, 2, 24, [True, False, False]),
           (recon, x, None, 0.5, K.GAUSSIAN_FIXED_VAR, 1, 1, [True, False, False]),
           (recon, x, plv.detach().repeat(1, 2).requires_grad_(), 0.0, K.GAUSSIAN_LEARNED_VAR, 2, 1, [True, False, True])]
        + [(recon, x, None, 0.0, K.SQUARED_ERROR, r, 1, [True, False, False]) for r in (0, 1, 2)],
        "elbo": [(logits, x, mu, lv, K.BERNOULLI_LOGITS, 0.5, 1, 1, [True, False, True, True]),
                 (recon, x, mu, lv, K.GAUSSIAN_FIXED_VAR, 1.0, 2, 4, [True, False, True, True])],
    }
    return [(name, args) for name, arg_list in cases.items() for args in arg_list]


@pytest.mark.parametrize("name,args", opcheck_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(OPS, name), args)


def _elbo_step(recon, x, mu, logvar):
    loss, rec, kl = vk.elbo_loss(recon, x, mu, logvar, return_components=True)
    return loss + 0.1 * rec.detach() + kl


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_forward_backward(dynamic):
    torch._dynamo.reset()
    recon, mu, lv = _leaf(8, 30, seed=1), _leaf(8, 5, seed=2), _leaf(8, 5, seed=3, scale=0.3)
    x = torch.rand(8, 30, dtype=torch.float64)
    pm = _leaf(5, seed=4)

    def step(recon, x, mu, lv, pm):
        z = vk.reparameterize(mu, lv, num_samples=2)
        return (_elbo_step(recon, x, mu, lv)
                + vk.gaussian_kl(mu, lv, pm, reduction="sum")
                + vk.gaussian_nll(recon, x, 0.3, reduction="mean")
                + vk.mse_loss(recon, x) + vk.bernoulli_nll(recon.sigmoid(), x, logits=False)
                + 1e-3 * z.square().sum())

    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
    torch.manual_seed(0)
    eager_loss = step(recon, x, mu, lv, pm)
    eager_grads = torch.autograd.grad(eager_loss, (recon, mu, lv, pm))
    torch.manual_seed(0)
    compiled_loss = compiled(recon, x, mu, lv, pm)
    compiled_grads = torch.autograd.grad(compiled_loss, (recon, mu, lv, pm))
    # The sampling term draws its seed inside the compiled graph (a different stream), so
    # compare everything but the tiny noise term tightly and the total loosely.
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-3, atol=1e-3)
    for a, b in zip(compiled_grads[:1], eager_grads[:1]):
        torch.testing.assert_close(a, b)


def test_torch_compile_matches_eager_exactly_without_noise():
    torch._dynamo.reset()
    recon, mu, lv = _leaf(16, 40, seed=5), _leaf(16, 6, seed=6), _leaf(16, 6, seed=7, scale=0.3)
    x = torch.rand(16, 40, dtype=torch.float64)
    compiled = torch.compile(_elbo_step, fullgraph=True)
    eager = _elbo_step(recon, x, mu, lv)
    got = compiled(recon, x, mu, lv)
    torch.testing.assert_close(got, eager, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (recon, mu, lv)), torch.autograd.grad(eager, (recon, mu, lv))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _loss_and_grads(recon, x, mu, lv):
    recon, mu, lv = (t.detach().requires_grad_() for t in (recon, mu, lv))
    out = vk.elbo_loss(recon, x, mu, lv, return_components=True, reduction="per_sample")
    grads = torch.autograd.grad(sum(o.sum() for o in out), (recon, mu, lv))
    return [*out, *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitwise_deterministic_across_runs_and_thread_counts(dtype):
    g = torch.Generator().manual_seed(8)
    recon = torch.randn(37, 9000, generator=g).to(dtype)  # rows span several 4096-element chunks
    x = torch.rand(37, 9000, generator=g).to(dtype)
    mu, lv = torch.randn(2, 37, 64, generator=g).to(dtype)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = _loss_and_grads(recon, x, mu, lv), _loss_and_grads(recon, x, mu, lv)
        torch.set_num_threads(1)
        single = _loss_and_grads(recon, x, mu, lv)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_double_backward_is_refused_not_wrong():
    """A gradient penalty needs the second derivative, which the hand-written backward
    passes do not provide: create_graph=True raises instead of treating it as zero."""
    l = _leaf(3, 4, seed=9)
    x = torch.rand(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(vk.bernoulli_nll(l, x), l, create_graph=True)
    mu, lv = _leaf(3, 2, seed=19), _leaf(3, 2, seed=20)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(vk.reparameterize(mu, lv).sum(), mu, create_graph=True)
    (grad,) = torch.autograd.grad(vk.bernoulli_nll(l, x, backend="torch"), l, create_graph=True)
    assert grad.requires_grad  # the eager reference supports it


def test_raw_op_refuses_gradients_it_was_not_asked_to_compute():
    l = _leaf(3, 4, seed=10)
    loss = OPS.reconstruction_nll(
        l, torch.rand(3, 4, dtype=torch.float64), None, 0.0, K.BERNOULLI_LOGITS, 2, 1, [False] * 3
    )[0]
    with pytest.raises(RuntimeError, match="grad_mask"):
        loss.backward()


def test_no_grad_computes_no_local_gradients():
    l = _leaf(3, 4, seed=11)
    with torch.no_grad():
        outputs = OPS.reconstruction_nll(
            l, torch.rand(3, 4, dtype=torch.float64), None, 0.0, K.BERNOULLI_LOGITS, 2, 1, [False] * 3
        )
    assert all(g.numel() == 0 for g in outputs[1:])


def test_cpu_kernel_isa_reports_an_instruction_set():
    assert ops.cpu_kernel_isa() in ("DEFAULT", "AVX2", "AVX512")


@pytest.mark.parametrize("upstream_kind", ["random", "ones"])
@pytest.mark.parametrize("reduction", ["none", "per_sample", "sum", "mean", "batchmean"])
def test_repeated_backward_with_retain_graph_gives_the_same_gradients(reduction, upstream_kind):
    """Eager backward writes input gradients into the forward's local-gradient buffers
    (or, for an upstream gradient of 1, returns them as they are); a second backward over
    the same graph must recompute them, not reuse the result."""
    recon, mu, lv = _leaf(5, 7, seed=12), _leaf(5, 3, seed=13), _leaf(5, 3, seed=14, scale=0.3)
    x = torch.rand(5, 7, dtype=torch.float64)
    losses = {
        "elbo": vk.elbo_loss(recon, x, mu, lv,
                             reduction={"none": "sum", "mean": "batchmean"}.get(reduction, reduction)),
        "bernoulli": vk.bernoulli_nll(recon, x, reduction=reduction),
        "kl": vk.gaussian_kl(mu, lv, reduction=reduction),
        "gaussian": vk.gaussian_nll(recon, x, lv[:, :1], reduction=reduction),
        "mse": vk.mse_loss(recon, x, reduction=reduction),
    }
    for name, loss in losses.items():
        upstream = torch.rand_like(loss) + 0.5 if upstream_kind == "random" else torch.ones_like(loss)
        first = torch.autograd.grad(loss, (recon, mu, lv), upstream, retain_graph=True, allow_unused=True)
        second = torch.autograd.grad(loss, (recon, mu, lv), upstream, allow_unused=True)
        for a, b in zip(first, second):
            assert (a is None and b is None) or torch.equal(a, b), name


def test_under_a_dispatch_mode_the_registered_autograd_gives_the_same_gradients():
    """A dispatch mode (a tracer, a FLOP counter) sees the op through the registered,
    functional autograd instead of the eager path; the gradients are the same."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    recon, mu, lv = _leaf(4, 6, seed=16), _leaf(4, 3, seed=17), _leaf(4, 3, seed=18)
    x = torch.rand(4, 6, dtype=torch.float64)
    expected = torch.autograd.grad(vk.elbo_loss(recon, x, mu, lv, beta=0.5), (recon, mu, lv))
    with RecordOps() as mode:
        got = torch.autograd.grad(vk.elbo_loss(recon, x, mu, lv, beta=0.5), (recon, mu, lv))
    assert "vae_kernels.loss_backward.default" in mode.names  # functional, not in place
    assert "vae_kernels.loss_backward_.default" not in mode.names
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def _backward_ops_run(loss, upstream) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward(upstream)
    return {e.name for e in prof.events() if e.name.startswith("vae_kernels::loss_backward")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_an_upstream_gradient_of_one_needs_no_backward_pass(dtype):
    """loss.backward() on a mean: the local gradients (already divided by the divisor)
    are the input gradients, so no loss_backward runs, except for float16, whose float32
    local gradients are converted; any other upstream value runs it."""
    x = torch.rand(6, 5, dtype=dtype)
    expected = (torch.sigmoid(torch.linspace(-3, 3, 30).reshape(6, 5).double()) - x.double()) / 30
    for upstream, skips in [(1.0, dtype != torch.float16), (2.0, False)]:
        logits = torch.linspace(-3, 3, 30, dtype=dtype).reshape(6, 5).requires_grad_()
        loss = vk.bernoulli_nll(logits, x, reduction="mean")
        ran = _backward_ops_run(loss, torch.tensor(upstream, dtype=dtype))
        assert (not ran) if skips else ran == {"vae_kernels::loss_backward"}, (upstream, ran)
        assert logits.grad.dtype == dtype
        torch.testing.assert_close(logits.grad.double(), upstream * expected, **TOLERANCES[dtype])


def test_large_outputs_held_by_the_caller_are_never_recycled():
    """Outputs of 8 MiB and more reuse the memory of earlier outputs once nothing
    references them; anything still referenced (a gradient, a view of an elementwise
    loss) must keep its values through later calls."""
    g = torch.Generator().manual_seed(15)
    shape = (64, 40_000)  # 10 MB in float32
    logits = [torch.randn(shape, generator=g).requires_grad_() for _ in range(3)]
    x = torch.rand(shape, generator=g)
    expected = [torch.sigmoid(l.detach()) - x for l in logits]  # d sum(BCE) / d logits
    held = []
    for l in logits:
        (grad,) = torch.autograd.grad(vk.bernoulli_nll(l, x, reduction="sum"), l)
        held.append(grad)
    elementwise = vk.bernoulli_nll(logits[0].detach(), x, reduction="none")
    first_row = elementwise[0]  # a view keeps the storage referenced
    del elementwise
    reference_row = vk.bernoulli_nll(logits[0].detach()[0], x[0], reduction="none", backend="torch")
    for l in logits:  # more calls that may recycle released memory
        (torch.autograd.grad(vk.bernoulli_nll(l, x, reduction="sum"), l)[0]).sum()
        vk.mse_loss(l.detach(), x, reduction="none")
    for grad, want in zip(held, expected):
        torch.testing.assert_close(grad, want)
    torch.testing.assert_close(first_row, reference_row)
    assert len({h.data_ptr() for h in held}) == 3


def test_the_cpp_ops_have_their_autograd_in_cpp():
    """Every op the C++ backend calls directly has its Autograd kernel in C++
    (csrc/autograd.cpp): an eager call is one dispatcher call, with no Python in
    forward or backward."""
    from vae_kernels.op_autograd import CPP_AUTOGRAD_OPS

    assert vk.ops.cpu.cpp_autograd_ops == frozenset(CPP_AUTOGRAD_OPS)
    for name in CPP_AUTOGRAD_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vae_kernels::{name}", "Autograd")
    mu = torch.randn(4, 3, requires_grad=True)
    assert vk.gaussian_kl(mu, mu.detach()).grad_fn.name() == "GaussianKlBackward"


def test_backward_nodes_free_their_inputs_and_check_in_place_changes():
    """The hand-written nodes (csrc/autograd.cpp) behave as torch's own: a second
    backward without retain_graph raises, and so does an input changed in place after
    the forward that saved it."""
    mu, logvar = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    for loss in (vk.gaussian_kl(mu, logvar), vk.reparameterize(mu, logvar).sum()):
        loss.backward()
        with pytest.raises(RuntimeError, match="second time"):
            loss.backward()
    x = torch.rand(4, 3)
    loss = vk.bernoulli_nll(mu, x, reduction="sum")
    with torch.no_grad():
        x.add_(0.0)  # a new version of a saved input
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    z = vk.reparameterize(mu, logvar)
    assert z.grad_fn.name() == "ReparameterizeBackward"
    assert [type(f).__name__ for f, _ in z.grad_fn.next_functions[:2]] == ["AccumulateGrad"] * 2
