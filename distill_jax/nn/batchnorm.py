"""BatchNorm with running statistics (PyTorch conventions) for NHWC inputs.

`BatchNorm` keeps `mean` and `var` in the flax "batch_stats" collection and
returns, with its output, the per-channel mean and biased variance of its
input over (N, H, W): the quantities SRe2L-style recovery matches against
the running statistics (its `BNFeatureHook`), reported in both modes.

  * train=True: normalise with the batch mean and biased batch variance;
    the updated running statistics are
      mean <- (1 - momentum) * mean + momentum * batch_mean
      var  <- (1 - momentum) * var + momentum * batch_var * n / (n - 1)
    (the unbiased batch variance, n = N * H * W), as `torch.nn.BatchNorm2d`
    with momentum 0.1. They are written only when the caller makes
    "batch_stats" mutable, and are not written during `init`.
  * train=False: normalise with the running statistics (output of each image
    independent of the rest of the batch).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def channel_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance of x over all axes but the last."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  shape = (1,) * (x.ndim - 1) + (-1,)  # explicit: no implicit rank promotion
  var = jnp.mean(jnp.square(x - mean.reshape(shape)), axis=axes)
  return mean, var


class BatchNorm(nn.Module):
  """Batch normalisation over the last axis with running statistics.

  Attributes:
    momentum: weight of the batch in the running-statistics update (PyTorch's
      `momentum`, 0.1).
    eps: added to the variance before the square root.

  Call: `bn(x, train) -> (y, ((mean, var), (running_mean, running_var)))`
  with `mean`, `var` of shape (C,): the moments of the input `x` (biased
  variance), whatever the mode, and the running statistics (after this
  call's update in train mode; recovery matches eval-mode moments to them).
  """
  momentum: float = 0.1
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    c = x.shape[-1]
    run_mean = self.variable("batch_stats", "mean",
                             lambda: jnp.zeros((c,), jnp.float32))
    run_var = self.variable("batch_stats", "var",
                            lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean, var = channel_moments(x)
    if train:
      n = x.size // c
      if n < 2:
        raise ValueError(f"BatchNorm in train mode needs more than one value "
                         f"per channel, got input shape {x.shape}.")
      if not self.is_initializing():
        m = self.momentum
        unbiased = jax.lax.stop_gradient(var) * (n / (n - 1))
        run_mean.value = ((1 - m) * run_mean.value +
                          m * jax.lax.stop_gradient(mean))
        run_var.value = (1 - m) * run_var.value + m * unbiased
      use_mean, use_var = mean, var
    else:
      use_mean, use_var = run_mean.value, run_var.value
    mul = jax.lax.rsqrt(use_var + self.eps) * scale
    shape = (1,) * (x.ndim - 1) + (c,)
    y = (x - use_mean.reshape(shape)) * mul.reshape(shape) + bias.reshape(
        shape)
    return y.astype(x.dtype), ((mean, var), (run_mean.value, run_var.value))
