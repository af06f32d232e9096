"""Bad input, on every public function and backend: a TypeError/ValueError whose message
names the argument and what was wrong, never a crash, a dispatcher error or a silently
wrong number. The raw ops (torch.ops.vae_kernels.*), reachable by any user, check their
arguments too, so nothing passed to them reads or writes out of bounds. Gradients of
targets (and of caller noise) are supported and correct."""

from __future__ import annotations

import math

import pytest
import torch

import vae_kernels as vk
from vae_kernels import reference
from vae_kernels.schema import LossKind as K

BACKENDS = [b for b in ("cpu", "torch") if b in vk.available_backends()]
requires_cpu = pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built")

x2 = torch.rand(4, 6)
lat = torch.randn(4, 3)
meta = torch.empty(4, 6, device="meta")
meta_lat = torch.empty(4, 3, device="meta")
sparse = x2.to_sparse()
nan = float("nan")

# (id, call(backend), error, message regex). Each message names the argument.
CASES = [
    # -- gaussian_kl
    ("kl-mu-int", lambda b: vk.gaussian_kl(lat.long(), lat, backend=b), TypeError, r"^mu must be a floating-point tensor.*torch.int64"),
    ("kl-logvar-bool", lambda b: vk.gaussian_kl(lat, lat > 0, backend=b), TypeError, r"^logvar must be a floating-point tensor.*torch.bool"),
    ("kl-logvar-complex", lambda b: vk.gaussian_kl(lat, lat.to(torch.complex64), backend=b), TypeError, r"^logvar must be a floating-point"),
    ("kl-logvar-device", lambda b: vk.gaussian_kl(lat, meta_lat, backend=b), ValueError, r"^logvar must be on the same device as mu"),
    ("kl-logvar-shape", lambda b: vk.gaussian_kl(lat, lat.t(), backend=b), ValueError, r"^logvar must have the same shape as mu \(4, 3\), got \(3, 4\)"),
    ("kl-prior_logvar-int", lambda b: vk.gaussian_kl(lat, lat, None, torch.zeros(3, dtype=torch.int32), backend=b), TypeError, r"^prior_logvar must be a floating-point"),
    ("kl-prior_logvar-device", lambda b: vk.gaussian_kl(lat, lat, None, meta_lat, backend=b), ValueError, r"^prior_logvar must be on the same device as mu"),
    ("kl-prior_logvar-bigger", lambda b: vk.gaussian_kl(lat, lat, None, torch.zeros(2, 4, 3), backend=b), ValueError, r"^prior_logvar of shape \(2, 4, 3\) must broadcast to mu's shape \(4, 3\)"),
    ("kl-reduction", lambda b: vk.gaussian_kl(lat, lat, reduction="elementwise", backend=b), ValueError, r"^reduction must be one of .*got 'elementwise'"),
    ("kl-reduction-none-type", lambda b: vk.gaussian_kl(lat, lat, reduction=None, backend=b), ValueError, r"^reduction must be one of .*got None"),
    ("kl-batchmean-0d", lambda b: vk.gaussian_kl(torch.tensor(0.0), torch.tensor(0.0), backend=b), ValueError, r"batchmean.*needs a batch dimension, but mu is a 0-d tensor"),
    ("kl-sparse", lambda b: vk.gaussian_kl(sparse, sparse, backend=b), TypeError, r"^mu must be a dense \(strided\) tensor"),
    ("kl-list", lambda b: vk.gaussian_kl([0.0], lat, backend=b), TypeError, r"^mu must be a torch.Tensor, got list"),
    # -- bernoulli_nll
    ("bce-target-shape", lambda b: vk.bernoulli_nll(x2, x2[:, :5], backend=b), ValueError, r"^target must have the same shape as input \(4, 6\), got \(4, 5\)"),
    ("bce-target-broadcastable", lambda b: vk.bernoulli_nll(x2, x2[:1], backend=b), ValueError, r"^target must have the same shape as input"),
    ("bce-target-int", lambda b: vk.bernoulli_nll(x2, x2.round().long(), backend=b), TypeError, r"^target must be a floating-point tensor"),
    ("bce-target-device", lambda b: vk.bernoulli_nll(x2, meta, backend=b), ValueError, r"^target must be on the same device as input"),
    ("bce-target-sparse", lambda b: vk.bernoulli_nll(x2, sparse, backend=b), TypeError, r"^target must be a dense \(strided\) tensor"),
    ("bce-target-above-1", lambda b: vk.bernoulli_nll(x2, x2 + 1.0001, backend=b), ValueError, r"target must lie in \[0, 1\]"),
    ("bce-target-negative", lambda b: vk.bernoulli_nll(x2, -x2 - 1e-6, backend=b), ValueError, r"target must lie in \[0, 1\]"),
    ("bce-target-inf", lambda b: vk.bernoulli_nll(x2, torch.full_like(x2, math.inf), backend=b), ValueError, r"target must lie in \[0, 1\]"),
    ("bce-probs-above-1", lambda b: vk.bernoulli_nll(x2 * 0 + 1.5, x2, logits=False, backend=b), ValueError, r"input \(probabilities.*must lie in \[0, 1\]"),
    ("bce-probs-neg-inf", lambda b: vk.bernoulli_nll(x2 * 0 - math.inf, x2, logits=False, backend=b), ValueError, r"input \(probabilities.*must lie in \[0, 1\]"),
    ("bce-logits-str", lambda b: vk.bernoulli_nll(x2, x2, logits="no", backend=b), TypeError, r"^logits must be a bool, got str"),
    ("bce-reduction", lambda b: vk.bernoulli_nll(x2, x2, reduction="MEAN", backend=b), ValueError, r"^reduction must be one of"),
    # -- gaussian_nll
    ("gnll-target-shape", lambda b: vk.gaussian_nll(x2, x2.t(), backend=b), ValueError, r"^target must have the same shape as input"),
    ("gnll-input-int", lambda b: vk.gaussian_nll(x2.int(), x2, backend=b), TypeError, r"^input must be a floating-point tensor"),
    ("gnll-logvar-int-tensor", lambda b: vk.gaussian_nll(x2, x2, torch.zeros(6, dtype=torch.long), backend=b), TypeError, r"^logvar must be a floating-point tensor"),
    ("gnll-logvar-device", lambda b: vk.gaussian_nll(x2, x2, meta, backend=b), ValueError, r"^logvar must be on the same device as input"),
    ("gnll-logvar-shape", lambda b: vk.gaussian_nll(x2, x2, torch.zeros(4), backend=b), ValueError, r"^logvar of shape \(4,\) must broadcast to input's shape \(4, 6\)"),
    ("gnll-logvar-bool", lambda b: vk.gaussian_nll(x2, x2, True, backend=b), TypeError, r"^logvar must be a float or a tensor, got bool"),
    ("gnll-logvar-none", lambda b: vk.gaussian_nll(x2, x2, None, backend=b), TypeError, r"^logvar must be a float or a tensor, got NoneType"),
    ("gnll-per_sample-0d", lambda b: vk.gaussian_nll(torch.tensor(1.0), torch.tensor(1.0), reduction="per_sample", backend=b), ValueError, r"needs a batch dimension, but input is a 0-d tensor"),
    # -- mse_loss
    ("mse-target-shape", lambda b: vk.mse_loss(x2, x2.reshape(6, 4), backend=b), ValueError, r"^target must have the same shape as input"),
    ("mse-input-bool", lambda b: vk.mse_loss(x2 > 0.5, x2, backend=b), TypeError, r"^input must be a floating-point tensor"),
    ("mse-input-sparse", lambda b: vk.mse_loss(sparse, x2, backend=b), TypeError, r"^input must be a dense \(strided\) tensor"),
    ("mse-input-number", lambda b: vk.mse_loss(1.0, x2, backend=b), TypeError, r"^input must be a torch.Tensor, got float"),
    # -- laplace_nll
    ("laplace-target-shape", lambda b: vk.laplace_nll(x2, x2.t(), backend=b), ValueError, r"^target must have the same shape as input"),
    ("laplace-input-int", lambda b: vk.laplace_nll(x2.int(), x2, backend=b), TypeError, r"^input must be a floating-point tensor"),
    ("laplace-logscale-shape", lambda b: vk.laplace_nll(x2, x2, torch.zeros(4), backend=b), ValueError, r"^logscale of shape \(4,\) must broadcast to input's shape \(4, 6\)"),
    ("laplace-logscale-int-tensor", lambda b: vk.laplace_nll(x2, x2, torch.zeros(6, dtype=torch.long), backend=b), TypeError, r"^logscale must be a floating-point tensor"),
    ("laplace-logscale-str", lambda b: vk.laplace_nll(x2, x2, "0", backend=b), TypeError, r"^logscale must be a float or a tensor, got str"),
    ("laplace-logscale-device", lambda b: vk.laplace_nll(x2, x2, meta, backend=b), ValueError, r"^logscale must be on the same device as input"),
    ("laplace-reduction", lambda b: vk.laplace_nll(x2, x2, reduction="l1", backend=b), ValueError, r"^reduction must be one of"),
    # -- continuous_bernoulli_nll
    ("cb-target-above-1", lambda b: vk.continuous_bernoulli_nll(x2, x2 + 1.0001, backend=b), ValueError, r"target must lie in \[0, 1\]"),
    ("cb-target-negative", lambda b: vk.continuous_bernoulli_nll(x2, -x2 - 1e-6, backend=b), ValueError, r"target must lie in \[0, 1\]"),
    ("cb-target-shape", lambda b: vk.continuous_bernoulli_nll(x2, x2[:2], backend=b), ValueError, r"^target must have the same shape as logits"),
    ("cb-logits-int", lambda b: vk.continuous_bernoulli_nll(x2.long(), x2, backend=b), TypeError, r"^logits must be a floating-point tensor"),
    ("cb-elbo-x-outside", lambda b: vk.elbo_loss(x2, x2 + 2, lat, lat, likelihood="continuous_bernoulli", backend=b), ValueError, r"x must lie in \[0, 1\]"),
    # -- scales
    ("scale-kl", lambda b: vk.gaussian_kl(lat, lat, scale="sigma", backend=b), ValueError, r"^scale must be one of \('logvar', 'logsigma'\), got 'sigma'"),
    ("scale-rep", lambda b: vk.reparameterize(lat, lat, scale="LOGSIGMA", backend=b), ValueError, r"^scale must be one of"),
    ("scale-elbo", lambda b: vk.elbo_loss(x2, x2, lat, lat, scale=2, backend=b), ValueError, r"^scale must be one of"),
    ("recon-scale-bernoulli", lambda b: vk.elbo_loss(x2, x2, lat, lat, recon_scale=0.0, backend=b), ValueError, r"^recon_scale applies to the likelihoods with a scale \('gaussian', 'laplace'\), not 'bernoulli'"),
    ("recon-scale-shape", lambda b: vk.elbo_loss(x2, x2, lat, lat, likelihood="laplace", recon_scale=torch.zeros(5), backend=b), ValueError, r"^recon_scale of shape \(5,\) must broadcast to recon's shape \(4, 6\)"),
    # -- reparameterize
    ("rep-logvar-shape", lambda b: vk.reparameterize(lat, lat[:, :2], backend=b), ValueError, r"^logvar must have the same shape as mu"),
    ("rep-mu-int", lambda b: vk.reparameterize(lat.long(), lat, backend=b), TypeError, r"^mu must be a floating-point tensor"),
    ("rep-eps-int", lambda b: vk.reparameterize(lat, lat, lat.long(), backend=b), TypeError, r"^eps must be a floating-point tensor"),
    ("rep-eps-device", lambda b: vk.reparameterize(lat, lat, meta_lat, backend=b), ValueError, r"^eps must be on the same device as mu"),
    ("rep-eps-shape", lambda b: vk.reparameterize(lat, lat, lat[:2], backend=b), ValueError, r"^eps must have shape \(4, 3\)"),
    ("rep-eps-broadcastable", lambda b: vk.reparameterize(lat, lat, lat[:1], backend=b), ValueError, r"^eps must have shape \(4, 3\)"),
    ("rep-eps-K", lambda b: vk.reparameterize(lat, lat, torch.randn(3, 4, 3), num_samples=2, backend=b), ValueError, r"^eps must have shape \(2, 4, 3\)"),
    ("rep-K-negative", lambda b: vk.reparameterize(lat, lat, num_samples=-1, backend=b), ValueError, r"^num_samples must be at least 1, got -1"),
    ("rep-K-bool", lambda b: vk.reparameterize(lat, lat, num_samples=True, backend=b), TypeError, r"^num_samples must be an int or None, got bool"),
    ("rep-K-tensor", lambda b: vk.reparameterize(lat, lat, num_samples=torch.tensor(2.0), backend=b), TypeError, r"^num_samples must be an int or None"),
    ("rep-generator-and-eps", lambda b: vk.reparameterize(lat, lat, lat, generator=torch.Generator(), backend=b), ValueError, r"generator is only used when eps is None"),
    ("rep-generator-type", lambda b: vk.reparameterize(lat, lat, generator=0, backend=b), TypeError, r"^generator must be a torch.Generator, got int"),
    # -- elbo_loss
    ("elbo-recon-int", lambda b: vk.elbo_loss(x2.long(), x2, lat, lat, backend=b), TypeError, r"^recon must be a floating-point tensor"),
    ("elbo-x-shape", lambda b: vk.elbo_loss(x2, x2[:, :5], lat, lat, backend=b), ValueError, r"^x must have the same shape as recon"),
    ("elbo-x-device", lambda b: vk.elbo_loss(x2, meta, lat, lat, backend=b), ValueError, r"^x must be on the same device as recon"),
    ("elbo-logvar-shape", lambda b: vk.elbo_loss(x2, x2, lat, lat[:, :2], backend=b), ValueError, r"^logvar must have the same shape as mu"),
    ("elbo-logvar-sparse", lambda b: vk.elbo_loss(x2, x2, lat, lat.to_sparse(), backend=b), TypeError, r"^logvar must be a dense \(strided\) tensor"),
    ("elbo-batch", lambda b: vk.elbo_loss(x2, x2, lat[:3], lat[:3], backend=b), ValueError, r"same batch size, got 4 and 3"),
    ("elbo-0d", lambda b: vk.elbo_loss(torch.tensor(0.5), torch.tensor(0.5), lat, lat, backend=b), ValueError, r"recon and mu need a batch dimension"),
    ("elbo-beta-negative", lambda b: vk.elbo_loss(x2, x2, lat, lat, beta=-1e-9, backend=b), ValueError, r"^beta must be >= 0"),
    ("elbo-beta-nan", lambda b: vk.elbo_loss(x2, x2, lat, lat, beta=nan, backend=b), ValueError, r"^beta must be >= 0, got nan"),
    ("elbo-beta-tensor", lambda b: vk.elbo_loss(x2, x2, lat, lat, beta=torch.tensor(1.0), backend=b), TypeError, r"^beta must be a float, got Tensor"),
    ("elbo-likelihood", lambda b: vk.elbo_loss(x2, x2, lat, lat, likelihood="Bernoulli", backend=b), ValueError, r"^likelihood must be one of"),
    ("elbo-reduction-none", lambda b: vk.elbo_loss(x2, x2, lat, lat, reduction="none", backend=b), ValueError, r"^reduction must be one of \('batchmean', 'sum', 'per_sample'\)"),
    ("elbo-x-outside", lambda b: vk.elbo_loss(x2, x2 - 1, lat, lat, backend=b), ValueError, r"x must lie in \[0, 1\]"),
    ("elbo-recon-probs-outside", lambda b: vk.elbo_loss(x2 * 2 + 0.01, x2, lat, lat, likelihood="bernoulli_probs", backend=b), ValueError, r"recon \(probabilities\) must lie in \[0, 1\]"),
    # -- unknown options
    ("unknown-backend", lambda b: vk.gaussian_kl(lat, lat, backend=b.upper()), ValueError, r"^backend must be one of"),
    ("unknown-keyword", lambda b: vk.bernoulli_nll(x2, x2, reduce="sum", backend=b), TypeError, r"unexpected keyword argument 'reduce'"),
    ("unknown-keyword-elbo", lambda b: vk.elbo_loss(x2, x2, lat, lat, kl_weight=1.0, backend=b), TypeError, r"unexpected keyword argument 'kl_weight'"),
    ("module-likelihood", lambda b: vk.ELBOLoss(likelihood="poisson", backend=b), ValueError, r"^likelihood must be one of"),
    ("module-reduction", lambda b: vk.ELBOLoss(reduction="mean", backend=b), ValueError, r"^reduction must be one of"),
    ("module-kl-reduction", lambda b: vk.GaussianKLLoss(reduction="avg", backend=b)(lat, lat), ValueError, r"^reduction must be one of"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,error,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_argument(backend, call, error, match):
    with pytest.raises(error, match=match):
        call(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_range_errors_leave_no_partial_state(backend):
    """A range error in one call does not affect the next valid call (no state kept)."""
    bad = x2.clone()
    bad[3, 5] = 2.0
    with pytest.raises(ValueError):
        vk.bernoulli_nll(x2, bad, backend=backend)
    good = vk.bernoulli_nll(x2, x2, reduction="sum", backend=backend)
    expected = reference.bernoulli_nll(x2.double(), x2.double(), True, "sum")
    torch.testing.assert_close(good.double(), expected, rtol=1e-6, atol=1e-6)


# The raw ops: every argument a user could get wrong is checked before a kernel runs.
def _long(*v):
    return torch.tensor(v, dtype=torch.long)


RAW = [
    ("reparameterize_backward-logvar-shape", lambda o: o.reparameterize_backward(torch.rand(2, 4, 6), torch.rand(4, 7), torch.rand(2, 4, 6)), ValueError, r"eps must have shape logvar.shape = \[4, 7\] or \(num_samples, \*logvar.shape\) = \(K, \[4, 7\]\)"),
    ("reparameterize_backward-logvar-bigger", lambda o: o.reparameterize_backward(torch.rand(2, 4, 6), torch.rand(40, 60), torch.rand(2, 4, 6)), ValueError, r"eps must have shape"),
    ("reparameterize_backward-logvar-dtype", lambda o: o.reparameterize_backward(torch.rand(2, 4, 6), torch.rand(4, 6).double(), torch.rand(2, 4, 6)), TypeError, r"logvar must have the dtype of eps"),
    ("reparameterize_backward-grad-shape", lambda o: o.reparameterize_backward(torch.rand(3, 4, 6), torch.rand(4, 6), torch.rand(2, 4, 6)), ValueError, r"grad_z must have the shape of eps"),
    ("reparameterize_backward-0d", lambda o: o.reparameterize_backward(torch.rand(2, 3), torch.tensor(1.0), torch.rand(2, 3)), ValueError, r"eps must have shape"),
    ("reparameterize_backward-int", lambda o: o.reparameterize_backward(torch.ones(1, 3, dtype=torch.long), torch.ones(3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)), TypeError, r"eps must be a floating-point tensor"),
    ("reparameterize-eps-rank", lambda o: o.reparameterize(x2, x2, torch.rand(6)), ValueError, r"eps must have shape mu.shape = \[4, 6\] or \(num_samples, \*mu.shape\)"),
    ("reparameterize-logvar-shape", lambda o: o.reparameterize(x2, torch.rand(4, 5), torch.rand(1, 4, 6)), ValueError, r"logvar must have the shape of mu"),
    ("philox-seed", lambda o: o.reparameterize_philox(x2, x2, _long(1, 2), 1), ValueError, r"seed must be an int64 tensor with one element"),
    ("philox-seed-dtype", lambda o: o.reparameterize_philox(x2, x2, torch.zeros(1), 1), ValueError, r"seed must be an int64 tensor"),
    ("philox-K", lambda o: o.reparameterize_philox(x2, x2, _long(0), 0), ValueError, r"num_samples must be >= 1, got 0"),
    ("philox-backward-shape", lambda o: o.reparameterize_philox_backward(torch.rand(2, 4, 5), x2, _long(0)), ValueError, r"grad_z must have shape logvar.shape = \[4, 6\] or \(num_samples, \*logvar.shape\) = \(K, \[4, 6\]\)"),
    ("philox-backward-logvar-int", lambda o: o.reparameterize_philox_backward(torch.rand(2, 4, 6), x2.long(), _long(0)), TypeError, r"logvar must be a floating-point tensor"),
    ("loss_backward-per_sample", lambda o: o.loss_backward(x2, torch.rand(3), 1), ValueError, r"grad_output must have 4 elements"),
    ("loss_backward-none", lambda o: o.loss_backward(x2, torch.rand(4, 5), 0), ValueError, r"grad_output must have shape \[4, 6\]"),
    ("loss_backward-sum", lambda o: o.loss_backward(x2, torch.rand(2), 2), ValueError, r"grad_output must be a scalar"),
    ("loss_backward-int", lambda o: o.loss_backward(x2, torch.ones(1, dtype=torch.long), 2), TypeError, r"grad_output must be a floating-point tensor"),
    ("loss_backward-dtype", lambda o: o.loss_backward(x2, torch.ones(1, dtype=torch.float64), 2), TypeError, r"local_grad must have dtype .*(Double|float64) for a grad_output of dtype .*(Double|float64), got .*(Float|float32)"),
    ("loss_backward-float16-local", lambda o: o.loss_backward(x2.half(), torch.ones(1, dtype=torch.float16), 2), TypeError, r"local_grad must have dtype .*(Float|float32) for a grad_output of dtype .*(Half|float16)"),
    ("loss_backward_-float16", lambda o: o.loss_backward_(x2, torch.ones(1, dtype=torch.float16), 2), TypeError, r"loss_backward_: cannot write a result of grad_output's dtype .*(Half|float16) in place of a local_grad of dtype .*(Float|float32)"),
    # float16 local gradients are read as float32: a float16 buffer would be misread.
    ("loss_backward_-float16-local", lambda o: o.loss_backward_(torch.full((4, 1000), 0.5, dtype=torch.float16), torch.tensor(2.0, dtype=torch.float16), 2), TypeError, r"loss_backward_: local_grad must have dtype .*(Float|float32) for a grad_output of dtype .*(Half|float16), got .*(Half|float16)"),
    ("loss_backward-reduction", lambda o: o.loss_backward(x2, torch.rand(()), 7), ValueError, r"reduction must be 0 \(none\), 1 \(per_sample\) or 2 \(sum\), got 7"),
    ("loss_backward_-strided", lambda o: o.loss_backward_(torch.rand(6, 4).t(), torch.rand(()), 2), ValueError, r"local_grad must be contiguous"),
    ("gaussian_kl-prior-shape", lambda o: o.gaussian_kl(x2, x2, torch.rand(6), torch.rand(6), 2, 1, [True] * 4), ValueError, r"prior_mu must have the shape of mu"),
    ("gaussian_kl-one-prior", lambda o: o.gaussian_kl(x2, x2, x2, None, 2, 1, [True] * 4), ValueError, r"pass both prior_mu and prior_logvar or neither"),
    ("gaussian_kl-logvar-dtype", lambda o: o.gaussian_kl(x2, x2.double(), None, None, 2, 1, [True] * 4), TypeError, r"logvar must have the dtype of mu"),
    ("reconstruction_nll-target-shape", lambda o: o.reconstruction_nll(x2, torch.rand(4, 5), None, 0.0, K.BERNOULLI_LOGITS, 2, 1, [True] * 3), ValueError, r"target must have the shape of input"),
    ("reconstruction_nll-int", lambda o: o.reconstruction_nll(x2.long(), x2.long(), None, 0.0, K.BERNOULLI_LOGITS, 2, 1, [True] * 3), TypeError, r"input must be a floating-point tensor"),
    ("reconstruction_nll-range", lambda o: o.reconstruction_nll(x2, x2 + 1, None, 0.0, K.BERNOULLI_LOGITS, 2, 1, [False] * 3), ValueError, r"target must lie in \[0, 1\]"),
    ("reconstruction_nll-probs-range", lambda o: o.reconstruction_nll(x2 - 1, x2, None, 0.0, K.BERNOULLI_PROBS, 2, 1, [False] * 3), ValueError, r"input \(probabilities\) must lie in \[0, 1\]"),
    ("reconstruction_nll-scale-shape", lambda o: o.reconstruction_nll(x2, x2, torch.rand(6), 0.0, K.GAUSSIAN_LEARNED_VAR, 2, 1, [True] * 3), ValueError, r"scale must have the shape of input"),
    ("reconstruction_nll-scale-missing", lambda o: o.reconstruction_nll(x2, x2, None, 0.0, K.GAUSSIAN_LEARNED_VAR, 2, 1, [True] * 3), ValueError, r"kind 5 needs a scale tensor"),
    ("reconstruction_nll-scale-extra", lambda o: o.reconstruction_nll(x2, x2, x2, 0.0, K.SQUARED_ERROR, 2, 1, [True] * 3), ValueError, r"kind 6 takes no scale tensor"),
    ("reconstruction_nll-kl-kind", lambda o: o.reconstruction_nll(x2, x2, None, 0.0, K.KL_STD_NORMAL, 2, 1, [True] * 3), ValueError, r"kind must be a reconstruction LossKind, got 0"),
    ("reconstruction_nll-reduction", lambda o: o.reconstruction_nll(x2, x2, None, 0.0, K.SQUARED_ERROR, -1, 1, [False] * 3), ValueError, r"reduction must be 0"),
    ("elbo-batch", lambda o: o.elbo(x2, x2, torch.rand(3, 2), torch.rand(3, 2), K.BERNOULLI_LOGITS, 1.0, 2, 1, [True] * 4), ValueError, r"must share their first \(batch\) dimension"),
    ("elbo-kind", lambda o: o.elbo(x2, x2, torch.rand(4, 2), torch.rand(4, 2), 12, 1.0, 2, 1, [True] * 4), ValueError, r"kind must be a reconstruction LossKind without a learned scale, got 12"),
    ("elbo-learned-kind", lambda o: o.elbo(x2, x2, torch.rand(4, 2), torch.rand(4, 2), K.GAUSSIAN_LEARNED_VAR, 1.0, 2, 1, [True] * 4), ValueError, r"kind must be a reconstruction LossKind without a learned scale"),
    ("elbo-reduction", lambda o: o.elbo(x2, x2, torch.rand(4, 2), torch.rand(4, 2), K.BERNOULLI_LOGITS, 1.0, 0, 1, [True] * 4), ValueError, r"reduction must be 1 \(per_sample\) or 2 \(sum\)"),
    ("elbo-logvar-shape", lambda o: o.elbo(x2, x2, torch.rand(4, 2), torch.rand(4, 3), K.BERNOULLI_LOGITS, 1.0, 2, 1, [True] * 4), ValueError, r"logvar must have the shape of mu"),
]


@requires_cpu
@pytest.mark.parametrize("call,error,match", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_raw_ops_check_their_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.ops.vae_kernels)


# ------------------------------------------------------------------ target gradients


def _grad_case(name, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    n = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    if name == "bce_logits":
        return lambda a, b, **k: vk.bernoulli_nll(a, b, **k), n(5, 7) * 4, r(5, 7)
    if name == "bce_probs":
        return lambda a, b, **k: vk.bernoulli_nll(a, b, logits=False, **k), r(5, 7), r(5, 7)
    if name == "gaussian":
        lv = n(7) * 0.5
        return lambda a, b, **k: vk.gaussian_nll(a, b, lv, **k), n(5, 7), n(5, 7)
    if name == "mse":
        return lambda a, b, **k: vk.mse_loss(a, b, **k), n(5, 7), n(5, 7)
    raise AssertionError(name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean", "per_sample"])
@pytest.mark.parametrize("name", ["bce_logits", "bce_probs", "gaussian", "mse"])
def test_targets_that_require_grad_get_the_true_gradient(name, reduction, backend):
    call, inp, target = _grad_case(name)
    target = target.clone().requires_grad_()
    out = call(inp, target, reduction=reduction, backend=backend)
    (grad_t,) = torch.autograd.grad(out, target, torch.ones_like(out))

    # Finite differences of the float64 formula, elementwise: the true d/d target.
    def f(tt):
        return call(inp, tt, reduction="none", backend="torch")

    h = 1e-6
    fd = (f(target.detach() + h) - f(target.detach() - h)) / (2 * h)
    divisor = {"mean": inp.numel(), "batchmean": inp.shape[0]}.get(reduction, 1)
    torch.testing.assert_close(grad_t, fd / divisor, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_elbo_target_and_noise_gradients(backend):
    g = torch.Generator().manual_seed(4)
    recon = torch.randn(3, 8, generator=g, dtype=torch.float64)
    x = torch.rand(3, 8, generator=g, dtype=torch.float64).requires_grad_()
    mu, logvar = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    vk.elbo_loss(recon, x, mu, logvar, reduction="sum", backend=backend).backward()
    torch.testing.assert_close(x.grad, -recon)  # d/dx of the Bernoulli NLL is -logits

    mu, logvar = mu.requires_grad_(), logvar.requires_grad_()
    eps = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = vk.reparameterize(mu, logvar, eps, num_samples=2, backend=backend)
    up = torch.rand(z.shape, generator=g, dtype=torch.float64)
    (grad_eps,) = torch.autograd.grad(z, eps, up)
    torch.testing.assert_close(grad_eps, up * torch.exp(0.5 * logvar.detach()))


@requires_cpu
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0)])
@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean", "per_sample"])
def test_empty_batch_backward(shape, reduction):
    x = torch.zeros(shape, requires_grad=True)
    out = vk.mse_loss(x, torch.zeros(shape), reduction=reduction, backend="cpu")
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (0, 2, 3)])
def test_empty_batch_forward(shape, backend):
    z = torch.zeros(shape)
    assert vk.mse_loss(z, z, reduction="sum", backend=backend).item() == 0.0
    assert vk.gaussian_kl(z, z, reduction="none", backend=backend).shape == shape
    assert vk.bernoulli_nll(z, z, reduction="per_sample", backend=backend).shape == shape[:1]
    assert vk.mse_loss(z, z, reduction="mean", backend=backend).isnan()  # 0 / 0, as torch
    assert vk.reparameterize(z, z, num_samples=2, backend=backend).shape == (2, *shape)
