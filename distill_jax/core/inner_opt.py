"""Inner optimisers as pure, differentiable optax transformations.

Each optimiser is split into a *direction* (an optax `GradientTransformation`
without the learning rate) and a learning rate applied by `apply`:

.. math::
  d_t, s_{t+1} = \\mathrm{tx.update}(g_t, s_t, \\theta_t), \\qquad
  \\theta_{t+1} = \\theta_t - \\eta_t d_t

so the learning rate may be a traced value (a learned per-step lr as in
`distill_jax.inner.step`) while the optimiser state (momentum, Adam moments)
is an ordinary pytree carried through `lax.fori_loop` / `lax.scan`: the
forward-only burn-in hands its state to the differentiable window, as
`higher.innerloop_ctx` does in the RaT-BPTT release.

Optimisers (PyTorch semantics, weight decay added to the gradient):
  * "gd":   d = g + wd * theta;
  * "sgd":  b = mu * b + (g + wd * theta), d = b (`torch.optim.SGD` momentum);
  * "adam": Adam moments of g + wd * theta, bias-corrected (`torch.optim.Adam`).

Adam differentiates through sqrt(v); `eps_root` > 0 keeps that derivative
finite where a gradient entry is exactly zero (dead ReLU units).
"""

from typing import NamedTuple

import jax
import optax

NAMES = ("gd", "sgd", "adam")
# RaT-BPTT defaults: README runs use Adam 1e-3; code default SGD 0.01 m 0.9.
DEFAULT_LR = {"gd": 0.01, "sgd": 0.01, "adam": 1e-3}


class InnerOpt(NamedTuple):
  """A learning-rate-free direction transform plus its default lr.

  Attributes:
    tx: optax transformation returning the direction d (no lr, no sign).
    lr: the learning rate used when none is learned.
    name: "gd", "sgd" or "adam".
  """
  tx: optax.GradientTransformation
  lr: float
  name: str


def build(name: str, lr: float, *, momentum: float = 0.9,
          weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, eps_root: float = 1e-16) -> InnerOpt:
  """Builds the named inner optimiser.

  Args:
    name: "gd", "sgd" or "adam".
    lr: learning rate (> 0).
    momentum: SGD momentum (PyTorch convention, dampening 0).
    weight_decay: L2 coefficient added to the gradient (e.g. 5e-4).
    b1: Adam first-moment decay.
    b2: Adam second-moment decay.
    eps: Adam epsilon (outside the square root).
    eps_root: Adam epsilon inside the square root (for differentiability).

  Returns:
    An `InnerOpt`.

  Examples:
    >>> import jax.numpy as jnp
    >>> opt = build("sgd", 0.1)
    >>> p = {"w": jnp.ones(2)}
    >>> p, s = apply(opt.tx, {"w": jnp.ones(2)}, opt.tx.init(p), p, opt.lr)
    >>> [round(float(v), 3) for v in p["w"]]
    [0.9, 0.9]
  """
  if name not in NAMES:
    raise ValueError(
        f"inner_opt={name!r} is not supported; choose one of {list(NAMES)}.")
  if not lr > 0:
    raise ValueError(f"inner_lr={lr} must be > 0.")
  if weight_decay < 0 or not 0 <= momentum < 1:
    raise ValueError(f"need weight_decay >= 0 (got {weight_decay}) and "
                     f"0 <= momentum < 1 (got {momentum}).")
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if name == "sgd":
    parts.append(optax.trace(decay=momentum, nesterov=False))
  elif name == "adam":
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps,
                                     eps_root=eps_root))
  tx = optax.chain(*parts) if parts else optax.identity()
  return InnerOpt(tx=tx, lr=float(lr), name=name)


def optimizer(opt: InnerOpt) -> optax.GradientTransformation:
  """The complete optax optimiser (direction then -lr), e.g. for reference."""
  return optax.chain(opt.tx, optax.scale(-opt.lr))


def apply(tx: optax.GradientTransformation, grads, opt_state, params, lr):
  """One update theta <- theta - lr * d; pure and differentiable.

  Args:
    tx: the direction transform (`InnerOpt.tx`).
    grads: gradient pytree.
    opt_state: `tx` state.
    params: current parameters.
    lr: scalar learning rate (float or traced array).

  Returns:
    (new params, new opt_state).
  """
  direction, opt_state = tx.update(grads, opt_state, params)
  params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
  return params, opt_state
