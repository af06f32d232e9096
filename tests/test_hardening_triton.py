"""The hardening checks for the Triton backend: on CPU through the Triton interpreter
(TRITON_INTERPRET=1), at tiny sizes, in float32/float64 (the interpreter computes no
half types); on a GPU in every dtype.

- the extremes of test_hardening_numerics.py against the float64 oracle;
- NaN propagation;
- hypothesis fuzzing with the strategies of test_hardening_fuzz.py (small shapes);
- bad input gets the same clear errors as on the other backends;
- bitwise determinism across runs.

TRITON_INTERPRET=1 works only if set before triton is first imported: it is set here
while this module is collected, if nothing has imported triton yet; otherwise
test_in_interpreter_subprocess re-runs this module in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import vae_kernels as vk  # noqa: E402

import test_hardening_fuzz as fuzz  # noqa: E402
import test_hardening_inputs as inputs  # noqa: E402
import test_hardening_numerics as numerics  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
IN_PROCESS = "triton" in vk.available_backends()
requires_triton = pytest.mark.skipif(
    not IN_PROCESS, reason="the Triton backend cannot run in this process (see the subprocess test)"
)
DTYPES = [torch.float32, torch.float64] if not HAS_CUDA else fuzz.DTYPES


@pytest.mark.skipif(IN_PROCESS, reason="the Triton tests run in this process")
@pytest.mark.skipif(HAS_CUDA, reason="only for the CPU interpreter")
def test_in_interpreter_subprocess():
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = Path(__file__)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here)],
        cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]


@pytest.fixture(scope="module", autouse=True)
def _report_examples_drawn(request):
    yield
    drawn = {k: v for k, v in fuzz.DRAWN.items() if k.endswith("/triton")}
    if drawn:
        fuzz.report(request, drawn)


def _on_device(tensors):
    return {k: v.to(DEVICE) for k, v in tensors.items()}


@requires_triton
@pytest.mark.parametrize("reduction", ["none", "sum", "per_sample"])
def test_empty_batch(reduction):
    z = torch.zeros(0, 4, device=DEVICE)
    out = vk.bernoulli_nll(z, z, reduction=reduction, backend="triton")
    assert out.numel() == 0 or out.item() == 0.0


@requires_triton
def test_float64_probability_gradient_equals_binary_cross_entropy():
    p = torch.tensor([0.0, 1.0, 1e-30, 1 - 1e-15], dtype=torch.float64, device=DEVICE)
    x = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=DEVICE)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    vk.bernoulli_nll(a, x, logits=False, reduction="sum", backend="triton").backward()
    torch.nn.functional.binary_cross_entropy(b, x, reduction="sum").backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["none", "sum", "per_sample"])
@pytest.mark.parametrize("case", list(numerics.WIDE_CASES))
def test_extremes_match_float64_oracle(case, reduction, dtype):
    call, tensors = numerics.WIDE_CASES[case]
    tensors = {k: v.unsqueeze(0) for k, v in tensors.items()}
    out, gs = numerics._run(call, _on_device(tensors), dtype, "triton", reduction)
    rounded = {k: v.to(dtype).double() for k, v in tensors.items()}
    out64, gs64 = numerics._run(call, rounded, torch.float64, "torch", reduction)
    numerics.assert_close_to_oracle(out.cpu(), out64, dtype)
    for name in gs:
        numerics.assert_close_to_oracle(gs[name].cpu(), gs64[name], dtype)


@requires_triton
@pytest.mark.parametrize("with_prior", [False, True], ids=["standard-normal", "learned-prior"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kl_near_the_prior_is_accurate_relative_to_its_size(dtype, with_prior):
    numerics.kl_near_the_prior("triton", dtype, with_prior, device=DEVICE)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_logit_gradient_and_infinite_logits(dtype):
    l = torch.tensor([[-1e4, -1e4, 1e4, 0.0, float("inf"), float("-inf")]], dtype=dtype,
                     device=DEVICE, requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 0.0, 0.5, 0.5, 0.5]], dtype=dtype, device=DEVICE)
    out = vk.bernoulli_nll(l, x, reduction="none", backend="triton")
    out.sum().backward()
    assert torch.equal(l.grad.cpu(), torch.tensor([[0.0, -1.0, 1.0, 0.0, 0.5, -0.5]], dtype=dtype))
    assert out[0, 4].item() == float("inf") and out[0, 5].item() == float("inf")


@requires_triton
@pytest.mark.parametrize("case,nan_input", numerics.NAN_PARAMS,
                         ids=[f"{c}-{n}" for c, n in numerics.NAN_PARAMS])
def test_nan_propagates(case, nan_input):
    call, tensors = numerics.NAN_CASES[case]
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors[nan_input][1, 3] = float("nan")
    per_element, gs = numerics._run(call, _on_device(tensors), torch.float32, "triton", "none")
    nan_at = torch.zeros(3, 5, dtype=torch.bool)
    nan_at[1, 3] = True
    assert torch.equal(per_element.cpu().isnan(), nan_at)
    rounded = {k: v.float().double() for k, v in tensors.items()}
    _, gs64 = numerics._run(call, rounded, torch.float64, "torch", "none")
    for name, grad in gs.items():
        assert torch.equal(grad.cpu().isnan(), gs64[name].isnan()), name


@requires_triton
@pytest.mark.parametrize("call,error,match", [c[1:] for c in inputs.CASES],
                         ids=[c[0] for c in inputs.CASES])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call("triton")


def _to_device_case(case):
    for inp in case.inputs.values():
        inp.base = inp.base.to(DEVICE)
    return case


@requires_triton
@fuzz._examples(0.1)
@given(case=fuzz.loss_cases(dtypes=tuple(DTYPES), small=True), retain=st.booleans())
def test_fuzz_losses(case, retain):
    fuzz._count("loss/triton")
    fuzz.check_case(_to_device_case(case), "triton", _call_cpu_oracle(fuzz.call_loss),
                    fuzz.loss_magnitudes, retain)


@requires_triton
@fuzz._examples(0.06)
@given(case=fuzz.elbo_cases(dtypes=tuple(DTYPES), small=True), retain=st.booleans())
def test_fuzz_elbo(case, retain):
    fuzz._count("elbo/triton")
    fuzz.check_elbo(case, "triton", retain)


@requires_triton
@fuzz._examples(0.06)
@given(case=fuzz.sample_cases(dtypes=tuple(DTYPES), small=True), retain=st.booleans())
def test_fuzz_reparameterize(case, retain):
    dtype, k, ins, seed = case
    fuzz._count("sample/triton")
    fuzz.check_reparameterize(dtype, k, ins, seed, "triton", retain)


def _call_cpu_oracle(call):
    """The oracle (backend "torch") runs on CPU copies; the backend on DEVICE."""
    def wrapped(case, args, backend):
        if backend == "torch":
            args = {k: v.cpu() for k, v in args.items()}
        out = call(case, args, backend)
        return out.cpu() if backend != "torch" else out
    return wrapped


@requires_triton
def test_bitwise_across_runs():
    g = torch.Generator().manual_seed(0)
    recon = torch.randn(6, 40, generator=g).to(DEVICE)
    x = torch.rand(6, 40, generator=g).to(DEVICE)
    mu, logvar = (torch.randn(2, 6, 5, generator=g)).to(DEVICE)

    def run():
        leaves = [t.clone().requires_grad_() for t in (recon, mu, logvar)]
        loss = vk.elbo_loss(leaves[0], x, leaves[1], leaves[2], reduction="sum", backend="triton")
        z = vk.reparameterize(leaves[1], leaves[2], num_samples=2,
                              generator=torch.Generator(device=DEVICE).manual_seed(3),
                              backend="triton")
        total = loss + z.square().sum()
        total.backward()
        return [total.detach(), *(t.grad for t in leaves)]

    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
