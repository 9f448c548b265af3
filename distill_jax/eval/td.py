"""Transferred discrepancy (TD) between two representations.

TD (Feng, Zhai, He, Wang, Dong, arXiv 2007.12446; the user's seed
`000_53ebc1c84a1eeef9.txt`) measures the difference between two
representations by their downstream-task predictions: a linear head is
fitted on each representation for the same task, and TD is the discrepancy
of the two heads' predictions on held-out inputs. OUR READING: the seed
holds the abstract only; the formula implemented is
TD = E_x d(h_A(f_A(x)), h_B(f_B(x))) with h_A, h_B the fitted heads and d
the disagreement of the predicted classes (or the squared distance of the
head outputs), the heads fitted by ridge least squares on one-hot labels or
by softmax regression.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _standardise(train, evals):
  """Centres on the training mean, divides by one scalar (RMS norm)."""
  train = np.asarray(train, np.float64).reshape(np.shape(train)[0], -1)
  mu = train.mean(0)
  scale = np.sqrt(np.mean(np.sum((train - mu) ** 2, axis=1)))
  scale = scale if scale > 0 else 1.0
  evals = np.asarray(evals, np.float64).reshape(np.shape(evals)[0], -1)
  return (train - mu) / scale, (evals - mu) / scale


def _ridge_outputs(x, y1h, x_eval, ridge):
  """Least squares with an unpenalised intercept, closed form (float64)."""
  n, d = x.shape
  y_mean = y1h.mean(0)
  yc = y1h - y_mean
  if ridge == 0.0:
    w = np.linalg.lstsq(x, yc, rcond=None)[0]
  elif d <= n:
    w = np.linalg.solve(x.T @ x + n * ridge * np.eye(d), x.T @ yc)
  else:  # dual form, n x n
    w = x.T @ np.linalg.solve(x @ x.T + n * ridge * np.eye(n), yc)
  return x_eval @ w + y_mean


def _softmax_outputs(x, y, x_eval, num_classes, ridge, steps, lr):
  """Multinomial logistic head by full-batch gradient descent from zero."""
  x = jnp.asarray(x, jnp.float32)
  y1h = jax.nn.one_hot(jnp.asarray(y), num_classes)

  def loss(params):
    w, b = params
    logp = jax.nn.log_softmax(x @ w + b[None])
    return -jnp.mean(jnp.sum(y1h * logp, -1)) + ridge * jnp.sum(w * w)

  def step(params, _):
    g = jax.grad(loss)(params)
    return jax.tree.map(lambda p, q: p - lr * q, params, g), None

  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
  (w, b), _ = jax.lax.scan(step, params, None, length=steps)
  return np.asarray(jnp.asarray(x_eval, jnp.float32) @ w + b[None],
                    np.float64)


def linear_head_outputs(feats, y, eval_feats=None, *, num_classes: int,
                        head: str = "ridge", ridge: float = 1e-3,
                        steps: int = 300, lr: float = 1.0) -> np.ndarray:
  """Outputs on `eval_feats` of a linear head fitted on (feats, y).

  Features are centred on the training mean and divided by one scalar, the
  RMS norm of the centred training features, so `ridge` is relative to the
  feature scale. head="ridge": closed-form least squares on one-hot targets
  with an unpenalised intercept, minimising mean ||Wx + b - onehot(y)||^2 +
  ridge ||W||^2 (ridge = 0: minimum-norm least squares). head="softmax":
  multinomial logistic regression (mean cross-entropy + ridge ||W||^2),
  `steps` of full-batch gradient descent with step `lr` from W = 0, b = 0.

  Args:
    feats: (N, ...) training features.
    y: (N,) integer labels of the downstream task.
    eval_feats: (M, ...) features to predict; default `feats`.
    num_classes: C.
    head: "ridge" or "softmax".
    ridge: L2 penalty on W.
    steps: gradient steps (softmax head).
    lr: gradient step size (softmax head).

  Returns:
    (M, C) float64 outputs (regression values or logits).
  """
  x, x_eval = _standardise(feats, feats if eval_feats is None else eval_feats)
  y = np.asarray(y).reshape(-1)
  if head == "ridge":
    return _ridge_outputs(x, np.eye(num_classes)[y], x_eval, float(ridge))
  if head == "softmax":
    return _softmax_outputs(x, y, x_eval, num_classes, float(ridge), steps, lr)
  raise ValueError(f"unknown head {head!r}; use 'ridge' or 'softmax'.")


def transferred_discrepancy(feats_a, feats_b, y, *, num_classes: int,
                            eval_feats_a=None, eval_feats_b=None,
                            head: str = "ridge", ridge: float = 1e-3,
                            discrepancy: str = "disagreement",
                            steps: int = 300, lr: float = 1.0) -> float:
  """Transferred discrepancy (TD) of two representations of the same inputs.

  Feng, Zhai, He, Wang, Dong, "Transferred Discrepancy: Quantifying the
  Difference Between Representations" (arXiv 2007.12446; abstract in seed
  `000_53ebc1c84a1eeef9.txt`): TD "defines the difference between two
  representations based on their downstream-task performance". For
  representations f_A, f_B, a head class H (linear here) and a downstream
  loss l:

    h_A = argmin_{h in H} E l(h(f_A(x)), y),  h_B likewise on f_B,
    TD(f_A, f_B) = E_x d(h_A(f_A(x)), h_B(f_B(x))).

  The seed holds only the abstract, with no formula; the formula above
  follows a secondary (third-party) summary of the paper, not the paper's
  text, and is unverified. Here the heads come from `linear_head_outputs`,
  fitted on (feats_*, y); the expectation is over `eval_feats_*` (held-out
  inputs, the better estimate) or, by default, the training inputs. d is
  "disagreement": fraction of inputs whose arg-max predictions differ
  (classification); or "sq_l2": mean ||h_A(f_A(x)) - h_B(f_B(x))||^2 of
  the head outputs (regression view).

  Invariances: with the intercept and the scalar standardisation, TD is 0
  (up to rounding) between representations that differ by a translation,
  orthogonal map or isotropic scaling, for any ridge and both heads (GD
  from zero is rotation-equivariant); for a general invertible linear map
  it is 0 only for head="ridge" with ridge -> 0 (ridge = 0: least squares).

  Args:
    feats_a: (N, ...) representation A of the training inputs.
    feats_b: (N, ...) representation B of the same inputs, same order.
    y: (N,) downstream labels.
    num_classes: C.
    eval_feats_a: (M, ...) A on evaluation inputs (default: feats_a).
    eval_feats_b: (M, ...) B on the same evaluation inputs.
    head, ridge, steps, lr: see `linear_head_outputs`.
    discrepancy: "disagreement" or "sq_l2".

  Returns:
    TD as a float (disagreement in [0, 1]).
  """
  if (eval_feats_a is None) != (eval_feats_b is None):
    raise ValueError("pass both eval_feats_a and eval_feats_b, or neither.")
  if np.shape(feats_a)[0] != np.shape(feats_b)[0]:
    raise ValueError("feats_a and feats_b must describe the same inputs.")
  kw = dict(num_classes=num_classes, head=head, ridge=ridge, steps=steps,
            lr=lr)
  out_a = linear_head_outputs(feats_a, y, eval_feats_a, **kw)
  out_b = linear_head_outputs(feats_b, y, eval_feats_b, **kw)
  if discrepancy == "disagreement":
    return float(np.mean(out_a.argmax(-1) != out_b.argmax(-1)))
  if discrepancy == "sq_l2":
    return float(np.mean(np.sum((out_a - out_b) ** 2, axis=-1)))
  raise ValueError(f"unknown discrepancy {discrepancy!r}.")
