// The vae_kernels operator schemas: each op is defined here once, and each backend
// registers an implementation of it (cpu/ops_cpu.cpp for CPU tensors, cuda/ops_cuda.cpp
// for CUDA tensors). The autograd formulas are autograd.cpp's; the shape functions for
// torch.compile (vae_kernels/ops.py) are registered in Python.
//
// Conventions:
// - `reduction`: 0 none (elementwise), 1 per_sample (shape (B,)), 2 sum (a scalar);
//   reduced values are divided by `divisor` (1, B for batchmean, numel for mean).
// - Loss ops return the loss first, then the local gradients of their differentiable
//   inputs, computed in the same pass when `grad_mask` asks for them (an empty tensor
//   otherwise): the gradient of the reduced loss for an upstream gradient of 1, i.e.
//   d loss_i / d input_i / divisor. They are float32 for float16 inputs (whose range a
//   local gradient can exceed), else in the inputs' dtype. `loss_backward` multiplies a
//   local gradient by the upstream gradient (`loss_backward_` in place); the result has
//   the upstream gradient's dtype.
#include <torch/library.h>

TORCH_LIBRARY(vae_kernels, m) {
  // `logsigma`: the scale arguments (logvar, prior_logvar) hold log sigma instead of the
  // log-variance; the kernels read them as they are (csrc/math/sampling.h, losses.h).
  // Samples (eps, z, grad_z) have mu's shape (one sample) or (K, *mu.shape) (K samples);
  // reparameterize_philox draws num_samples=None as one sample of mu's shape.
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor eps, bool logsigma=False) -> Tensor");
  m.def(
      "reparameterize_backward(Tensor grad_z, Tensor logvar, Tensor eps, bool logsigma=False) "
      "-> (Tensor, Tensor)");
  m.def(
      "reparameterize_philox(Tensor mu, Tensor logvar, Tensor seed, int? num_samples, "
      "bool logsigma=False) -> Tensor");
  // The same draw, also returning its noise eps: on the CPU, backward reads eps
  // (reparameterize_backward) instead of regenerating it.
  m.def(
      "reparameterize_philox_with_noise(Tensor mu, Tensor logvar, Tensor seed, "
      "int? num_samples, bool logsigma=False) -> (Tensor, Tensor)");
  m.def(
      "reparameterize_philox_backward(Tensor grad_z, Tensor logvar, Tensor seed, "
      "bool logsigma=False) -> (Tensor, Tensor)");
  m.def(
      "gaussian_kl(Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar, "
      "int reduction, SymInt divisor, bool[4] grad_mask, bool logsigma=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // A reconstruction likelihood `kind` (a LossKind of csrc/math/losses.h): inputs
  // input, target, and `scale` for a kind with a learned scale (logvar, log-scale);
  // `scale_value` is a fixed-scale kind's scale.
  m.def(
      "reconstruction_nll(Tensor input, Tensor target, Tensor? scale, float scale_value, "
      "int kind, int reduction, SymInt divisor, bool[3] grad_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // The negative ELBO: the reconstruction `kind` (at its unit scale) + beta * KL to N(0, I).
  m.def(
      "elbo(Tensor recon, Tensor x, Tensor mu, Tensor logvar, int kind, float beta, "
      "int reduction, SymInt divisor, bool[4] grad_mask, bool logsigma=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The discretized logistic mixture NLL of PixelCNN++ (csrc/math/discretized_logistic_mixture.h):
  // params (B, P, H, W) in its layout, x (B, C, H, W) on the 2^num_bits-level grid of
  // [-1, 1]. The loss (reduction 0: per pixel, (B, H, W)) has the promoted dtype of params
  // and x; the local gradient has params' shape (contiguous) and local-gradient dtype,
  // and the backward multiplies it by the upstream gradient broadcast over P.
  m.def(
      "discretized_logistic_mixture_nll(Tensor params, Tensor x, int num_bits, int reduction, "
      "SymInt divisor, bool[1] grad_mask) -> (Tensor, Tensor)");
  m.def("loss_backward(Tensor local_grad, Tensor grad_output, int reduction) -> Tensor");
  // In place: the forward's local-gradient buffer becomes the input's gradient, which
  // saves an allocation and a pass. Eager autograd uses it once per forward.
  m.def("loss_backward_(Tensor(a!) local_grad, Tensor grad_output, int reduction) -> ()");
}
