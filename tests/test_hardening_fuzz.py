"""Property-based fuzzing (hypothesis) of every public op against the float64 oracle.

Each example draws an op with its options (prior / learned or broadcast variance /
likelihood / K samples), a shape (empty batches, one element, 1-D to 4-D, rows that
span several 4096-element chunks), a dtype, a reduction, a layout for each input
(contiguous, transposed, strided slice, expanded from a broadcast dimension) and values
drawn wide (scales 1e-3 ... 1e4, exact zeros, exact 0/1 probabilities), then compares
the backend's value and gradients (non-uniform upstream gradient) with
``vae_kernels.reference`` evaluated in float64 on the same rounded inputs. A repeated
backward with ``retain_graph=True`` must give bitwise the same gradients.

Profiles (``VK_HYPOTHESIS_PROFILE``): ``ci`` (default; derandomized, so every run draws
the same examples, and bounded to run in well under a minute) and ``long`` (random,
many more examples, for manual runs:
``VK_HYPOTHESIS_PROFILE=long python -m pytest tests/test_hardening_fuzz.py``).

Tolerance: each dtype's rtol/atol from conftest.TOLERANCES, applied to a magnitude that
accounts for the cancellation inherent in a formula (e.g. ``exp(lv) - 1 - lv`` near
lv = 0, or ``t*t + lv + log(2*pi)``): the sum of the absolute values of the terms,
summed again over whatever a reduction or a broadcast adds up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vae_kernels as vk
from vae_kernels import reference

from conftest import TOLERANCES

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=600,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("VK_HYPOTHESIS_PROFILE", "ci")
# Per-test example counts are relative to the profile's (see _examples).
_BASE = {"ci": 600, "long": 5000}[PROFILE]


def _examples(fraction: float) -> settings:
    return settings(settings.get_profile(PROFILE), max_examples=max(10, int(_BASE * fraction)))


# The backends fuzzed here: the C++ kernels, and the eager reference itself (run in the
# drawn dtype, it must agree with its own float64 evaluation). The Triton backend is
# fuzzed in test_hardening_triton.py.
BACKENDS = [b for b in ("cpu", "torch") if b in vk.available_backends()]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOG_2PI = math.log(2 * math.pi)

# Counts of examples drawn in this process, printed after the module's tests.
DRAWN: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_examples_drawn(request):
    yield
    if DRAWN:
        report(request, DRAWN)


def report(request, drawn: dict[str, int]) -> None:
    """Print the example counts past pytest's output capture."""
    line = (f"[hypothesis profile {PROFILE!r}] examples drawn: {dict(sorted(drawn.items()))}, "
            f"total {sum(drawn.values())}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print("\n" + line)


def _count(name: str) -> None:
    DRAWN[name] = DRAWN.get(name, 0) + 1


# ------------------------------------------------------------------ inputs


@dataclass
class Input:
    """One tensor argument: float64 base values and the view that turns the base into
    the argument (so non-contiguous and expanded arguments have a leaf to compare)."""

    base: torch.Tensor
    view: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    grad: bool = True


@dataclass
class Case:
    op: str
    dtype: torch.dtype
    reduction: str
    inputs: dict[str, Input]
    options: dict = field(default_factory=dict)


def _layout_input(draw, values: torch.Tensor, layout: str) -> Input:
    """An Input whose view has ``values``' shape, built with ``layout``."""
    shape = values.shape
    if layout == "transposed" and values.dim() >= 2:
        base = values.transpose(0, -1).contiguous()
        return Input(base, lambda t: t.transpose(0, -1))
    if layout == "sliced" and values.dim() >= 1:
        # Every other element of a tensor twice as long in the last dim.
        wide = torch.stack([values, torch.full_like(values, float("nan"))], dim=-1)
        base = wide.reshape(*shape[:-1], 2 * shape[-1]) if values.numel() else values.clone()
        if values.numel() == 0:
            return Input(base)
        return Input(base, lambda t: t[..., ::2])
    if layout == "expanded" and values.dim() >= 1 and values.numel() > 0:
        dim = draw(st.integers(0, values.dim() - 1))
        base = values.narrow(dim, 0, 1).contiguous()
        return Input(base, lambda t, shape=shape: t.expand(shape))
    return Input(values.clone())


def _values(gen: torch.Generator, shape, scale: float, zeros: float = 0.1) -> torch.Tensor:
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    mask = torch.rand(shape, generator=gen, dtype=torch.float64) < zeros
    return torch.where(mask, torch.zeros_like(t), t)


def _unit(gen: torch.Generator, shape, hard: float) -> torch.Tensor:
    """Values in [0, 1]: a fraction exactly 0 or 1, the rest uniform."""
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    r = torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.where(r < hard, u.round(), u)


def _ranges(dtype: torch.dtype) -> tuple[list[float], float]:
    """(scales of ordinary values, bound of log-variances) that keep every intermediate
    (exp(lv), local gradients) inside ``dtype``'s range; the extremes beyond are
    test_hardening_numerics.py's job."""
    if dtype == torch.float16:
        # Small enough that values and gradients, summed over a reduction and times an
        # upstream gradient, stay below 65504 (the local gradients alone may exceed it:
        # test_hardening_numerics.py::test_float16_gradient_finite_when_only_the_local_gradient_overflows).
        return [1e-3, 0.1, 1.0], 4.0
    # |lv - plv| <= 68 keeps exp(lv - plv) (and sums of it) far inside float32: near
    # the top of the range the local gradient 0.5*(exp(lv - plv) - 1), or a float32
    # partial sum, overflows even where the upstream weight or the reduction's divisor
    # would bring the final value back into range (as torch's float32 does; documented).
    return [1e-3, 1.0, 10.0, 100.0, 1e4], 34.0


@st.composite
def shapes(draw, min_dims: int = 1, max_dims: int = 4, small: bool = False):
    ndim = draw(st.integers(min_dims, max_dims))
    dims = [draw(st.integers(0 if i == 0 else 1, 5)) for i in range(ndim)]
    if not small and draw(st.integers(0, 9)) == 0:  # now and then a row over several chunks
        dims[-1] = draw(st.sampled_from([4097, 5000, 8200]))
        dims[0] = min(dims[0], 2)
        for i in range(1, ndim - 1):
            dims[i] = 1
    return tuple(dims)


LOSS_OPS = ["gaussian_kl", "bernoulli_logits", "bernoulli_probs", "gaussian_nll", "mse_loss",
            "laplace_nll", "continuous_bernoulli"]


@st.composite
def loss_cases(draw, dtypes=tuple(DTYPES), small: bool = False) -> Case:
    op = draw(st.sampled_from(LOSS_OPS))
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes(max_dims=3 if small else 4, small=small))
    reduction = draw(st.sampled_from(["none", "sum", "mean", "batchmean", "per_sample"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scales, lv_bound = _ranges(dtype)
    scale = draw(st.sampled_from(scales))
    layouts = st.sampled_from(["contiguous", "contiguous", "transposed", "sliced", "expanded"])

    def lv(shape_=shape):
        s = draw(st.sampled_from([0.01, 1.0, 10.0, lv_bound]))
        return _values(gen, shape_, s).clamp(-lv_bound, lv_bound)

    values: dict[str, torch.Tensor] = {}
    options: dict = {}
    if op == "gaussian_kl":
        values = {"mu": _values(gen, shape, scale), "logvar": lv()}
        prior = draw(st.sampled_from(["none", "full", "broadcast", "mu_only", "logvar_only"]))
        options["prior"] = prior
        pshape = shape if prior == "full" else shape[-1:]
        if prior in ("full", "broadcast", "mu_only"):
            values["prior_mu"] = _values(gen, pshape, scale)
        if prior in ("full", "broadcast", "logvar_only"):
            values["prior_logvar"] = lv(pshape)
    elif op == "bernoulli_logits":
        values = {"input": _values(gen, shape, scale), "target": _unit(gen, shape, 0.5)}
    elif op == "bernoulli_probs":
        values = {"input": _unit(gen, shape, 0.1), "target": _unit(gen, shape, 0.7)}
        if dtype == torch.float16:  # the gradient's 1/(p(1-p)) inside float16's range
            values["input"] = values["input"] * 0.98 + 0.01
    elif op in ("gaussian_nll", "laplace_nll"):
        values = {"input": _values(gen, shape, scale), "target": _values(gen, shape, scale)}
        variance = draw(st.sampled_from(["fixed", "learned", "broadcast"]))
        options["variance"] = variance
        if variance == "fixed":
            options["logvar"] = draw(st.sampled_from([0.0, -0.3, 2.5, -lv_bound / 2, lv_bound]))
        else:
            values["logvar"] = lv(shape if variance == "learned" else shape[-1:])
    elif op == "continuous_bernoulli":
        values = {"input": _values(gen, shape, scale), "target": _unit(gen, shape, 0.5)}
    else:
        values = {"input": _values(gen, shape, scale), "target": _values(gen, shape, scale)}
    if dtype == torch.float16:  # the inputs themselves must be float16 numbers
        values = {k: v.clamp(-6e4, 6e4) for k, v in values.items()}
    inputs = {}
    for name, v in values.items():
        inp = _layout_input(draw, v, draw(layouts))
        # Targets need no gradient in most training, but every loss supports one.
        inp.grad = draw(st.booleans()) if name == "target" else True
        inputs[name] = inp
    return Case(op, dtype, reduction, inputs, options)


# ------------------------------------------------------------------ the ops


def call_loss(case: Case, args: dict[str, torch.Tensor], backend: str) -> torch.Tensor:
    op, red = case.op, case.reduction
    if op == "gaussian_kl":
        return vk.gaussian_kl(args["mu"], args["logvar"], args.get("prior_mu"),
                              args.get("prior_logvar"), reduction=red, backend=backend)
    if op == "bernoulli_logits":
        return vk.bernoulli_nll(args["input"], args["target"], reduction=red, backend=backend)
    if op == "bernoulli_probs":
        return vk.bernoulli_nll(args["input"], args["target"], logits=False, reduction=red,
                                backend=backend)
    if op == "gaussian_nll":
        logvar = args.get("logvar", case.options.get("logvar"))
        return vk.gaussian_nll(args["input"], args["target"], logvar, reduction=red,
                               backend=backend)
    if op == "laplace_nll":  # the log-scale drawn as the Gaussian's log-variance
        logscale = args.get("logvar", case.options.get("logvar"))
        return vk.laplace_nll(args["input"], args["target"], logscale, reduction=red,
                              backend=backend)
    if op == "continuous_bernoulli":
        return vk.continuous_bernoulli_nll(args["input"], args["target"], reduction=red,
                                           backend=backend)
    return vk.mse_loss(args["input"], args["target"], reduction=red, backend=backend)


def magnitudes(op: str, a: dict[str, torch.Tensor], options: dict):
    """(value magnitude, {input: gradient magnitude}) per element, float64: the sum of
    the absolute values of each formula's terms, the scale its rounding errors have."""
    if op == "gaussian_kl":
        mu, lv = a["mu"], a["logvar"]
        pm = a.get("prior_mu", torch.zeros_like(mu)).expand_as(mu)
        plv = a.get("prior_logvar", torch.zeros_like(mu)).expand_as(mu)
        t2 = (mu - pm) ** 2 * torch.exp(-plv)
        ratio = torch.exp(lv - plv)
        value = 0.5 * (plv.abs() + lv.abs() + ratio + t2 + 1)
        dmu = (mu.abs() + pm.abs()) * torch.exp(-plv)
        return value, {"mu": dmu, "prior_mu": dmu, "logvar": 0.5 * (ratio + 1),
                       "prior_logvar": 0.5 * (1 + ratio + t2)}
    if op == "bernoulli_logits":
        l, x = a["input"], a["target"]
        value = l.abs() + math.log(2)
        return value, {"input": torch.ones_like(l) + x.abs(), "target": l.abs()}
    if op == "bernoulli_probs":
        p = a["input"]
        log_p = torch.log(p).clamp_min(-100).abs()
        log_1mp = torch.log1p(-p).clamp_min(-100).abs()
        value = log_p + log_1mp
        dp = 1 / torch.clamp_min(p * (1 - p), 1e-12)
        return value, {"input": dp, "target": value}
    if op == "gaussian_nll":
        m, x = a["input"], a["target"]
        lv = a.get("logvar", options.get("logvar"))
        lv = torch.as_tensor(lv, dtype=torch.float64).expand_as(m)
        t2 = (m - x) ** 2 * torch.exp(-lv)
        dm = (m.abs() + x.abs()) * torch.exp(-lv)
        return 0.5 * (t2 + lv.abs() + LOG_2PI), {"input": dm, "target": dm,
                                                  "logvar": 0.5 * (1 + t2)}
    if op == "laplace_nll":
        m, x = a["input"], a["target"]
        s = a.get("logvar", options.get("logvar"))
        s = torch.as_tensor(s, dtype=torch.float64).expand_as(m)
        t = (m.abs() + x.abs()) * torch.exp(-s)
        return t + s.abs() + math.log(2), {"input": torch.exp(-s), "target": torch.exp(-s),
                                           "logvar": 1 + t}
    if op == "continuous_bernoulli":
        l, x = a["input"], a["target"]
        value = l.abs() + math.log(2) + torch.log1p(l.abs())
        return value, {"input": torch.ones_like(l) + x.abs() + 1, "target": l.abs()}
    m, x = a["input"], a["target"]
    s = (m.abs() + x.abs())
    return s * s, {"input": 2 * s, "target": 2 * s}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor,
                 dtype: torch.dtype, what: str) -> None:
    """``actual`` within dtype tolerance of the float64 ``expected``, the relative part
    taken of ``magnitude``; overflow of the dtype's range must be inf on both sides."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    tol = TOLERANCES[dtype]
    actual = actual.double()
    nan = expected.isnan()
    assert torch.equal(actual.isnan(), nan), f"{what}: NaN where the oracle has none (or back)"
    finfo_max = torch.finfo(dtype).max
    rounded = expected.to(dtype).double()  # the ideal result, rounded to the dtype
    over = (rounded.isinf() | actual.isinf()) & ~nan
    edge = finfo_max * (1 - 2 * tol["rtol"])
    if dtype in (torch.float32, torch.bfloat16):
        # Documented float32 window: exp(x) overflows where 0.5*exp(x) would still fit
        # (see test_hardening_numerics.py::test_float32_exp_overflow_window_matches_torch).
        edge = min(edge, torch.finfo(torch.float32).max / 2 * (1 - 1e-3))
    if over.any():  # an overflow: both at the edge of the range, with the same sign
        near_edge = expected[over].abs() >= edge
        assert bool(near_edge.all()) and torch.equal(
            actual[over].sign(), expected[over].sign()
        ), f"{what}: inf where the oracle is {expected[over][~near_edge][:5].tolist()}"
    ok = ~nan & ~over
    allowed = tol["atol"] + tol["rtol"] * torch.maximum(magnitude.double(), expected.abs())
    err = (actual - expected).abs()
    bad = ok & ~(err <= allowed)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} elements off, e.g. got "
        f"{actual[bad][:4].tolist()} expected {expected[bad][:4].tolist()} "
        f"(allowed {allowed[bad][:4].tolist()})"
    )


def _leaves(case: Case, dtype: torch.dtype, oracle: bool):
    leaves, args = {}, {}
    for name, inp in case.inputs.items():
        base = inp.base.to(case.dtype)
        if oracle:
            base = base.double()
        leaves[name] = base.detach().requires_grad_(inp.grad)
        args[name] = inp.view(leaves[name])
    return leaves, args


def _upstream(out: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.5


def check_case(case: Case, backend: str, call, magnitude_fn, retain: bool) -> None:
    dtype = case.dtype
    leaves, args = _leaves(case, dtype, oracle=False)
    out = call(case, args, backend)
    leaves64, args64 = _leaves(case, dtype, oracle=True)
    out64 = call(case, args64, "torch")
    assert out.dtype == dtype and out.shape == out64.shape

    # Magnitudes of the formula's terms, on the materialized arguments.
    full64 = {k: v.detach() for k, v in args64.items()}
    value_mag, grad_mags = magnitude_fn(case, full64)
    reduced_mag = reference.reduce_loss(value_mag, case.reduction)
    assert_close(out, out64.detach(), reduced_mag, dtype, f"{case.op} value")

    wanted = [k for k, v in leaves.items() if v.requires_grad]
    if not wanted:
        return
    upstream = _upstream(out, seed=out.numel())
    up = upstream.to(dtype)
    up64 = up.double()  # the oracle sees the same rounded upstream gradient
    grads = torch.autograd.grad(out, [leaves[k] for k in wanted], up, retain_graph=retain,
                                allow_unused=True)
    grads64 = torch.autograd.grad(out64, [leaves64[k] for k in wanted], up64)
    # Per-argument gradient magnitude, mapped back onto the leaf through its view (which
    # sums what an expanded view repeats).
    per_element_up = up64.abs()
    if case.reduction in ("sum", "mean", "batchmean"):
        divisor = {"sum": 1, "mean": max(1, value_mag.numel()),
                   "batchmean": max(1, value_mag.shape[0] if value_mag.dim() else 1)}
        per_element_up = per_element_up / divisor[case.reduction]
    elif case.reduction == "per_sample":
        per_element_up = per_element_up.reshape(-1, *([1] * (value_mag.dim() - 1)))
    for name, grad, grad64 in zip(wanted, grads, grads64):
        # Broadcast arguments (a prior or log-variance of shape (J,)) sum their terms.
        mag_full = (grad_mags[name] * per_element_up).expand(value_mag.shape)
        mag_arg = mag_full.sum_to_size(args64[name].shape).contiguous()
        leaf = leaves64[name].detach().requires_grad_()
        (mag_leaf,) = torch.autograd.grad(case.inputs[name].view(leaf), leaf, mag_arg)
        assert grad is not None, name
        assert grad.dtype == dtype and grad.shape == leaves[name].shape, name
        assert_close(grad, grad64, mag_leaf, dtype, f"{case.op} d/d{name}")
    if retain:
        again = torch.autograd.grad(out, [leaves[k] for k in wanted], up)
        for name, first, second in zip(wanted, grads, again):
            assert torch.equal(first, second), f"second backward differs for {name}"


def loss_magnitudes(case: Case, a):
    return magnitudes(case.op, a, case.options)


@pytest.mark.parametrize("backend", BACKENDS)
@_examples(1.0)
@given(case=loss_cases(), retain=st.booleans())
def test_loss_ops_match_float64_oracle(backend, case, retain):
    if backend == "torch" and case.dtype in (torch.float16, torch.bfloat16):
        # Eager torch rounds every intermediate to the half type: not the kernels' contract.
        case.dtype = torch.float32
    _count(f"loss/{backend}")
    check_case(case, backend, call_loss, loss_magnitudes, retain)


# ------------------------------------------------------------------ ELBO


@st.composite
def elbo_cases(draw, dtypes=tuple(DTYPES), small: bool = False) -> Case:
    dtype = draw(st.sampled_from(dtypes))
    recon_shape = draw(shapes(min_dims=1, max_dims=3 if small else 4, small=small))
    batch = recon_shape[0]
    latent_shape = (batch, *draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    likelihood = draw(st.sampled_from(list(vk.functional.LIKELIHOODS)))
    reduction = draw(st.sampled_from(["batchmean", "sum", "per_sample"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scales, lv_bound = _ranges(dtype)
    scale = draw(st.sampled_from(scales))
    if likelihood == "bernoulli_probs":
        recon, x = _unit(gen, recon_shape, 0.1), _unit(gen, recon_shape, 0.7)
        if dtype == torch.float16:  # see loss_cases
            recon = recon * 0.98 + 0.01
    elif likelihood in ("bernoulli", "continuous_bernoulli"):
        recon, x = _values(gen, recon_shape, scale), _unit(gen, recon_shape, 0.5)
    else:
        recon, x = _values(gen, recon_shape, scale), _values(gen, recon_shape, scale)
    values = {"recon": recon, "x": x, "mu": _values(gen, latent_shape, scale),
              "logvar": _values(gen, latent_shape, draw(st.sampled_from([0.01, 1.0, lv_bound])))
              .clamp(-lv_bound, lv_bound)}
    if dtype == torch.float16:
        values = {k: v.clamp(-6e4, 6e4) for k, v in values.items()}
    layouts = st.sampled_from(["contiguous", "transposed", "sliced"])
    inputs = {}
    for name, v in values.items():
        inp = _layout_input(draw, v, draw(layouts))
        inp.grad = draw(st.booleans()) if name == "x" else True
        inputs[name] = inp
    options = {"likelihood": likelihood, "beta": draw(st.sampled_from([0.0, 0.5, 1.0, 4.0])),
               "component": draw(st.sampled_from([0, 1, 2]))}
    return Case("elbo", dtype, reduction, inputs, options)


def call_elbo(case: Case, args, backend: str) -> torch.Tensor:
    loss, recon_nll, kl = vk.elbo_loss(
        args["recon"], args["x"], args["mu"], args["logvar"],
        likelihood=case.options["likelihood"], beta=case.options["beta"],
        reduction=case.reduction, return_components=True, backend=backend)
    # Which output the upstream gradient flows into: all three reach the inputs through
    # different paths of the ELBO's backward.
    return (loss, recon_nll, kl)[case.options["component"]]


def elbo_magnitudes(case: Case, a):
    lik = case.options["likelihood"]
    recon_op = {"bernoulli": "bernoulli_logits", "bernoulli_probs": "bernoulli_probs",
                "gaussian": "gaussian_nll", "mse": "mse_loss", "laplace": "laplace_nll",
                "continuous_bernoulli": "continuous_bernoulli"}[lik]
    recon_value, recon_grads = magnitudes(recon_op, {"input": a["recon"], "target": a["x"]},
                                          {"logvar": 0.0})
    kl_value, kl_grads = magnitudes("gaussian_kl", {"mu": a["mu"], "logvar": a["logvar"]}, {})
    component = case.options["component"]
    beta = case.options["beta"] if component == 0 else 1.0
    recon_w = 0.0 if component == 2 else 1.0
    kl_w = 0.0 if component == 1 else beta
    # Per-sample magnitudes, broadcast back to the recon shape for the reduction helper.
    def rows(t):
        return t.flatten(1).sum(1) if t.dim() > 1 else t

    per_sample = recon_w * rows(recon_value) + kl_w * rows(kl_value)
    value = per_sample.reshape(-1, *([1] * (recon_value.dim() - 1))).expand_as(recon_value)
    value = value / max(1, math.prod(recon_value.shape[1:]))
    grads = {"recon": recon_w * recon_grads["input"], "x": recon_w * recon_grads["target"],
             "mu": kl_w * kl_grads["mu"], "logvar": kl_w * kl_grads["logvar"]}
    return value, grads


@pytest.mark.parametrize("backend", BACKENDS)
@_examples(0.6)
@given(case=elbo_cases(), retain=st.booleans())
def test_elbo_matches_float64_oracle(backend, case, retain):
    if backend == "torch" and case.dtype in (torch.float16, torch.bfloat16):
        case.dtype = torch.float32
    _count(f"elbo/{backend}")
    # Gradient magnitudes of the latent inputs are per latent element; the upstream
    # weights of the reduced output map onto them by batch row. check_case handles the
    # recon-shaped inputs; the latent ones get the same per-row weights.
    check_elbo(case, backend, retain)


def check_elbo(case: Case, backend: str, retain: bool) -> None:
    dtype = case.dtype
    leaves, args = _leaves(case, dtype, oracle=False)
    out = call_elbo(case, args, backend)
    leaves64, args64 = _leaves(case, dtype, oracle=True)
    out64 = call_elbo(case, args64, "torch")
    full64 = {k: v.detach() for k, v in args64.items()}
    value_mag, grad_mags = elbo_magnitudes(case, full64)
    assert_close(out, out64.detach(), reference.reduce_loss(value_mag, case.reduction), dtype,
                 "elbo value")
    wanted = [k for k, v in leaves.items() if v.requires_grad]
    up = _upstream(out, seed=7).to(dtype)
    if not wanted:
        return

    def grads_of(output, inputs, upstream, **kw):  # a term the output does not use: zeros
        gs = torch.autograd.grad(output, inputs, upstream, allow_unused=True, **kw)
        return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs)]

    grads = grads_of(out, [leaves[k] for k in wanted], up, retain_graph=retain)
    grads64 = grads_of(out64, [leaves64[k] for k in wanted], up.double())
    batch = max(1, args64["recon"].shape[0])
    row_up = up.double().abs().reshape(-1) if case.reduction == "per_sample" else None
    for name, grad, grad64 in zip(wanted, grads, grads64):
        g = grad_mags[name]
        if row_up is not None:
            g = g * row_up.reshape(-1, *([1] * (g.dim() - 1)))
        else:
            g = g * up.double().abs() / (batch if case.reduction == "batchmean" else 1)
        leaf = leaves64[name].detach().requires_grad_()
        (mag_leaf,) = torch.autograd.grad(case.inputs[name].view(leaf), leaf, g.contiguous())
        assert grad.dtype == dtype and grad.shape == leaves[name].shape
        assert_close(grad, grad64, mag_leaf, dtype, f"elbo d/d{name}")
    if retain:
        again = grads_of(out, [leaves[k] for k in wanted], up)
        for name, first, second in zip(wanted, grads, again):
            assert torch.equal(first, second), f"second backward differs for {name}"


# ------------------------------------------------------------------ sampling


@st.composite
def sample_cases(draw, dtypes=tuple(DTYPES), small: bool = False):
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes(min_dims=1, max_dims=3, small=small))
    k = draw(st.sampled_from([None, 1, 2, 5]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scales, lv_bound = _ranges(dtype)
    mu = _values(gen, shape, draw(st.sampled_from(scales)))
    logvar = _values(gen, shape, draw(st.sampled_from([0.01, 1.0, lv_bound]))).clamp(
        -lv_bound, lv_bound)
    eps = torch.randn(shape if k is None else (k, *shape), generator=gen, dtype=torch.float64)
    layouts = st.sampled_from(["contiguous", "transposed", "sliced"])
    return dtype, k, {"mu": _layout_input(draw, mu, draw(layouts)),
                      "logvar": _layout_input(draw, logvar, draw(layouts)),
                      "eps": _layout_input(draw, eps, draw(layouts))}, draw(st.integers(0, 99))


@pytest.mark.parametrize("backend", BACKENDS)
@_examples(0.5)
@given(case=sample_cases(), retain=st.booleans())
def test_reparameterize_matches_float64_oracle(backend, case, retain):
    dtype, k, inputs, seed = case
    if backend == "torch" and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    _count(f"sample/{backend}")
    check_reparameterize(dtype, k, inputs, seed, backend, retain)


def check_reparameterize(dtype, k, inputs, seed, backend: str, retain: bool) -> None:
    leaves = {n: i.base.to(dtype).requires_grad_(n != "eps") for n, i in inputs.items()}
    args = {n: inputs[n].view(leaves[n]) for n in leaves}
    z = vk.reparameterize(args["mu"], args["logvar"], args["eps"], num_samples=k,
                          backend=backend)
    leaves64 = {n: v.detach().double().requires_grad_(n != "eps") for n, v in leaves.items()}
    args64 = {n: inputs[n].view(leaves64[n]) for n in leaves64}
    z64 = reference.reparameterize(args64["mu"], args64["logvar"], args64["eps"], k, None)
    std = torch.exp(0.5 * args64["logvar"].detach())
    mag = args64["mu"].detach().abs() + std * args64["eps"].detach().abs()
    assert_close(z, z64.detach(), mag, dtype, "z")
    up = _upstream(z, seed).to(dtype)
    grads = torch.autograd.grad(z, [leaves["mu"], leaves["logvar"]], up, retain_graph=retain)
    grads64 = torch.autograd.grad(z64, [leaves64["mu"], leaves64["logvar"]], up.double())
    n_samples = 1 if k is None else k
    sum_up = up.double().abs().reshape(n_samples, *args64["mu"].shape).sum(0)
    g_mag = {"mu": sum_up,
             "logvar": 0.5 * std * (up.double().abs() * args64["eps"].detach().abs())
             .reshape(n_samples, *args64["mu"].shape).sum(0)}
    for name, grad, grad64 in zip(("mu", "logvar"), grads, grads64):
        leaf = leaves64[name].detach().requires_grad_()
        (mag_leaf,) = torch.autograd.grad(inputs[name].view(leaf), leaf, g_mag[name])
        assert_close(grad, grad64, mag_leaf, dtype, f"reparameterize d/d{name}")
    if retain:
        again = torch.autograd.grad(z, [leaves["mu"], leaves["logvar"]], up)
        assert all(torch.equal(a, b) for a, b in zip(grads, again))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")
@_examples(0.3)
@given(case=sample_cases())
def test_in_kernel_noise_backward_matches_its_forward(case):
    """With Philox noise the backward regenerates eps: its gradients must be those of
    the eps the forward used, recovered as (z - mu) / std in float64."""
    dtype, k, inputs, seed = case
    _count("philox/cpu")
    mu = inputs["mu"].view(inputs["mu"].base).to(dtype).requires_grad_()
    logvar = (inputs["logvar"].view(inputs["logvar"].base).to(dtype).clamp(-20, 20)
              .requires_grad_())
    gen = torch.Generator().manual_seed(seed)
    z = vk.reparameterize(mu, logvar, num_samples=k, generator=gen, backend="cpu")
    up = _upstream(z, seed).to(dtype)
    g_mu, g_lv = torch.autograd.grad(z, [mu, logvar], up)
    std = torch.exp(0.5 * logvar.detach().double())
    n = 1 if k is None else k
    # eps as the forward drew it: the kernel's own float32 Box-Muller output, before
    # rounding z; recover it from z where that rounding is small next to std * eps.
    eps = (z.detach().double() - mu.detach().double()) / std
    zs = z.detach().double().reshape(n, *mu.shape)
    upk = up.double().reshape(n, *mu.shape)
    expected_lv = 0.5 * std * (upk * eps.reshape(n, *mu.shape)).sum(0)
    assert_close(g_mu, upk.sum(0), upk.abs().sum(0), dtype, "philox d/dmu")
    # |z| / std bounds the rounding error of z relative to the recovered eps.
    err_scale = 0.5 * std * (upk.abs() * (zs.abs() / std + eps.reshape(n, *mu.shape).abs())).sum(0)
    assert_close(g_lv, expected_lv, err_scale, dtype, "philox d/dlogvar")
