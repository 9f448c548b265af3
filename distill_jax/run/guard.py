"""Divergence guard of the host loops, and strict JSON for metrics.jsonl.

A run diverges when the meta-loss, the gradient norm or the learned data
(or the outer optimiser's state) turn non-finite. The loops check at the
steps where they sync with the device anyway (log, validation and
checkpoint steps, the last step) and before anything is written:

    err = guard.error(step, record, state.learned, state.opt_state)
    if err is not None:
      write_record(log, record)  # non-finite values become null.
      raise err

so no checkpoint, best-validation set or final set is ever non-finite, and
the newest checkpoint on disk is the last finite one. `DivergedError` is a
`ValueError` whose message is one line naming the step, what turned
non-finite and what to change.
"""

import json
import math
from typing import Any

import jax
import numpy as np

from distill_jax.run import checkpoint

NONFINITE_FIELD = "nonfinite"  # metrics.jsonl: names of the null values.


class DivergedError(ValueError):
  """The run turned non-finite at outer step `step`."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


def advice(outer_lr: float, clip_coef: float | None = None) -> str:
  """What to change: lower the outer lr (and enable clipping if it is off).

  Args:
    outer_lr: the run's outer learning rate.
    clip_coef: the run's gradient-clipping coefficient, if the method has
      one (0 = off); None for methods without clipping.

  Returns:
    A sentence fragment such as "Lower --outer_lr (now 1e+12)".
  """
  text = f"Lower --outer_lr (now {outer_lr:g})"
  if clip_coef is not None and clip_coef <= 0:
    text += " or enable gradient clipping (--clip_coef=0.9)"
  return text


def _describe(value: float) -> str:
  return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _path_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the floating-point leaves of `tree` holding NaN or inf.

  The check runs on the host (`np.isfinite`); call it only where the loop
  syncs anyway.
  """
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
      bad.append(_path_name(path) or "value")
  return bad


def _metric_causes(metrics: dict | None) -> list[tuple[str, str]]:
  causes = []
  for key, what in (("loss", "the meta-loss"),
                    ("grad_norm", "the gradient norm")):
    if metrics and key in metrics:
      v = float(metrics[key])
      if not math.isfinite(v):
        causes.append((f"{what} is {_describe(v)}", what))
  return causes


def _join(nouns: list[str]) -> str:
  return nouns[0] if len(nouns) == 1 else (
      ", ".join(nouns[:-1]) + " and " + nouns[-1])


class Guard:
  """Checks a run's state for divergence.

  Attributes:
    mngr: the run's checkpoint manager (names the last finite checkpoint).
    advice: what to change, e.g. `advice(cfg.outer_lr)`.
  """

  def __init__(self, mngr: checkpoint.Manager, advice_text: str):
    self.mngr = mngr
    self.advice = advice_text

  def error(self, step: int, metrics: dict | None, learned,
            opt_state: Any = None) -> DivergedError | None:
    """The divergence at `step`, or None if everything is finite.

    Args:
      step: outer steps done.
      metrics: the step's metrics ("loss", "grad_norm"; floats or arrays),
        or None.
      learned: the learned distilled data (a pytree).
      opt_state: the rest of the outer state that a checkpoint holds.

    Returns:
      A `DivergedError` with a one-line message, or None.
    """
    causes = _metric_causes(metrics)  # (as the cause, as one of several).
    bad = nonfinite_leaves(learned)
    if bad:
      data = f"the distilled data ({', '.join(bad)})"
      causes.append((f"{data} turned non-finite", data))
    if opt_state is not None and nonfinite_leaves(opt_state):
      causes.append(("the outer optimiser state turned non-finite",
                     "the outer optimiser state"))
    if not causes:
      return None
    what = causes[0][0]
    if causes[1:]:
      others = [noun for _, noun in causes[1:]]
      what += (f"; {_join(others)} {'is' if len(others) == 1 else 'are'} "
               "non-finite too")
    last = self.mngr.latest_step()
    kept = (f"the last finite checkpoint (step {last}) is kept in "
            f"{self.mngr.directory}" if last is not None else
            "no checkpoint had been written yet")
    return DivergedError(
        f"diverged at outer step {step}: {what}. {self.advice}; {kept}.",
        step)

  def check(self, step: int, metrics: dict | None, learned,
            opt_state: Any = None) -> None:
    """Raises the `DivergedError` of `error(...)`, if any."""
    err = self.error(step, metrics, learned, opt_state)
    if err is not None:
      raise err


def sanitize(record: dict) -> dict:
  """`record` with non-finite floats as None, listed under "nonfinite".

  Nested dicts are sanitised too (their names joined by "/").
  """
  bad = []

  def clean(value, name):
    if isinstance(value, dict):
      return {k: clean(v, f"{name}/{k}" if name else str(k))
              for k, v in value.items()}
    if isinstance(value, (list, tuple)):
      return [clean(v, f"{name}/{i}") for i, v in enumerate(value)]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
      bad.append(name)
      return None
    return value
  out = clean(record, "")
  if bad:
    out[NONFINITE_FIELD] = bad
  return out


def dumps(record: dict) -> str:
  """One strict-JSON line (no NaN or Infinity) of a metrics record."""
  return json.dumps(sanitize(record), allow_nan=False)


def write_record(log, record: dict) -> None:
  """Appends `record` to an open metrics.jsonl and flushes it."""
  log.write(dumps(record) + "\n")
  log.flush()
