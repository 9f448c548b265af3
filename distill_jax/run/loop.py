"""The one host loop of every bilevel method: `outer_loop`.

It runs a jitted outer step for a fixed number of steps and takes care of
everything around it, the same way for DD, RaT-BPTT and each Boost-DD block:

  * real batches from `batch_indices` (per-epoch permutations seeded by
    (seed, epoch)) and PRNG keys folded from the step number inside the
    step, so any step can be recomputed after a restart;
  * metrics to `metrics.jsonl` (strict JSON; non-finite values as null,
    `guard.write_record`), a progress line, the wall-clock time counted
    across resumes;
  * validation candidates every `eval_every` steps and at the last step,
    the best one kept (selection on validation, never on test);
  * checkpoints of the outer state *and* the best candidate (atomic,
    `checkpoint`), `resume`, an optional time budget and `stop_at`;
  * divergence: the state is checked on the host wherever the loop syncs
    anyway (log, evaluation, checkpoint and last steps), before anything
    is written, so no checkpoint or candidate is ever non-finite; a
    non-finite state raises `guard.DivergedError` naming the step;
  * optionally TensorBoard events and a profiler trace (`observe`).

Resuming from the newest checkpoint gives the same result, bit for bit, as
an uninterrupted run on the same devices, and within float rounding on
another device or host count (the checkpoint holds whole arrays; sharded
reductions sum in another order).

On several hosts (`platform.distributed`) every process runs the loop and
every step; only process 0 writes metrics.jsonl, checkpoints, TensorBoard
events, a trace and the progress line, and the decision to stop on the
time budget is process 0's (`distributed.agree`), so all processes run the
same number of steps.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from distill_jax.platform import distributed
from distill_jax.platform import xla_options
from distill_jax.run import checkpoint
from distill_jax.run import guard as guard_lib
from distill_jax.run import observe
from distill_jax.run import progress as progress_lib
from distill_jax.run import storage


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """When the loop logs, evaluates, checkpoints and stops.

  Attributes:
    total: outer steps to run.
    seed: seed of the real-batch order.
    real_batch: real examples per outer step.
    log_every: steps between metrics records (the last step is logged).
    checkpoint_every: steps between checkpoints (0: only at the end).
    eval_every: steps between validation candidates (0: none on the way).
    eval_last: also score a candidate at the last step.
    select: keep the best-scoring candidate (else the last state).
    time_budget_s: > 0 stops the loop after this much wall-clock time.
  """
  total: int
  seed: int
  real_batch: int
  log_every: int = 50
  checkpoint_every: int = 500
  eval_every: int = 0
  eval_last: bool = False
  select: bool = True
  time_budget_s: float = 0.0


class LoopResult(NamedTuple):
  """What the loop hands to the method's final evaluation and outputs.

  Attributes:
    learned: the selected learned pytree (numpy): the best candidate, or
      the last state when nothing was selected.
    state: the final outer state.
    best_step: the step of `learned`.
    best_val: its validation score (%), or None if no candidate was scored.
    steps: outer steps done.
    train_time_s: wall-clock seconds of the loop, across resumes.
    interrupted: True when `stop_at` stopped the loop (no final outputs).
  """
  learned: dict
  state: object
  best_step: int
  best_val: float | None
  steps: int
  train_time_s: float
  interrupted: bool


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
  """Real-batch indices of outer step `step`: epoch-wise permutations.

  The permutation of epoch e depends only on (seed, e), so any step's batch
  can be recomputed after a restart.
  """
  per_epoch = max(1, n // batch)
  epoch, i = divmod(step, per_epoch)
  return _epoch_permutation(seed, epoch, n)[i * batch:(i + 1) * batch]


def truncate_metrics(path: str, step: int) -> float:
  """Drops records after `step` from a metrics.jsonl (used on resume).

  Records kept are rewritten as strict JSON (an older file's bare NaN
  becomes null); a last line cut short by a killed process is dropped.

  Returns:
    The `time_s` of the last record kept (0.0 if none), so a resumed run's
    clock continues from the interrupted one (the time between its last log
    line and its checkpoint is not counted).
  """
  if not os.path.exists(path):
    return 0.0
  with open(path) as f:
    raw = [l for l in f if l.strip()]
  recs = []
  for i, line in enumerate(raw):
    try:
      recs.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(raw) - 1:  # the write a killed process did not finish.
        break
      raise ValueError(
          f"{path}: line {i + 1} is not JSON ({e}); the metrics of this run "
          "are damaged. Remove the broken line or use a fresh --workdir."
      ) from e
  kept = [r for r in recs if r["step"] <= step]
  storage.atomic_write(
      path, lambda f: f.writelines(guard_lib.dumps(r) + "\n" for r in kept),
      mode="w")
  return float(kept[-1].get("time_s") or 0.0) if kept else 0.0


def check_resume_config(path: str, cfg, run_control: tuple[str, ...]) -> None:
  """Refuses a resume whose configuration differs from the run's own.

  Args:
    path: the interrupted run's config.json.
    cfg: the configuration of the resume (a config dataclass).
    run_control: fields that may differ (when the run stops, what it logs,
      or how, not what, it computes).

  Raises:
    ValueError: naming the fields that differ.
  """
  with open(path) as f:
    old = json.load(f)
  new = json.loads(json.dumps(dataclasses.asdict(cfg)))
  # A field missing from an older config.json had its current default.
  defaults = json.loads(json.dumps(dataclasses.asdict(type(cfg)())))
  diff = sorted(k for k in new if k not in run_control and
                old.get(k, defaults.get(k)) != new[k])
  if diff:
    raise ValueError(
        f"--resume with a different configuration: {diff} differ from "
        f"{path}. Resume with the original flags or use a fresh --workdir.")


def check_resume_steps(workdir: str, total: int) -> None:
  """Refuses a resume whose newest checkpoint is past `total` steps."""
  start = checkpoint.manager(workdir).latest_step() or 0
  if start > total:
    raise ValueError(
        f"--resume: the newest checkpoint in {workdir} is at outer step "
        f"{start}, past outer_steps={total}. Resume with outer_steps >= "
        f"{start}, or finish at an earlier step from a copy of the run whose "
        "newest checkpoint is at that step.")


def _host(tree):
  return distributed.host_tree(tree)


class _NoObserver:
  """What the processes other than 0 record: nothing."""

  def before_step(self, step):
    pass

  def after_step(self, step, state):
    pass

  def record(self, rec):
    pass

  def close(self):
    pass


def _start(workdir: str, state, total: int, mngr, metrics_path: str,
           resume: bool):
  """(checkpoint tree, first step, elapsed seconds) of a fresh or resumed
  run; a fresh one starts a new metrics.jsonl."""
  writer = distributed.is_writer()
  if writer:
    os.makedirs(workdir, exist_ok=True)
  ckpt = {"state": state, "best": _host(state.learned),
          "best_val": np.float64(-1), "best_step": np.int32(0)}
  start, elapsed = 0, 0.0
  if resume:
    check_resume_steps(workdir, total)
    restored, ckpt = checkpoint.restore_latest(mngr, ckpt)
    start = int(restored or 0)
    if writer:  # the others' clocks do not decide anything (`agree`).
      elapsed = truncate_metrics(metrics_path, start)
  elif writer and os.path.exists(metrics_path):
    os.remove(metrics_path)
  return ckpt, start, elapsed


def _due(step: int, loop: LoopConfig, t0: float, has_eval: bool,
         stop_at: int | None) -> tuple[bool, bool, bool, bool, bool]:
  """What step `step` does: (last, evaluate, log, interrupted, checkpoint).
  The time budget is process 0's clock, agreed by every process."""
  last = step == loop.total or bool(
      loop.time_budget_s and distributed.agree(
          time.time() - t0 > loop.time_budget_s))
  is_eval = has_eval and (
      (last and loop.eval_last) or
      bool(loop.eval_every and step % loop.eval_every == 0))
  is_log = step % loop.log_every == 0 or is_eval or last
  interrupted = stop_at is not None and step >= stop_at and not last
  is_ckpt = bool(interrupted or last or (
      loop.checkpoint_every and step % loop.checkpoint_every == 0))
  return last, is_eval, is_log, interrupted, is_ckpt


def outer_loop(workdir: str, state, step_fn: Callable, step_args: Callable,
               *, n_train: int,
               loop: LoopConfig, advice: str,
               evaluate: Callable | None = None, resume: bool = False,
               show_progress: bool = True,
               stop_at: int | None = None) -> LoopResult:
  """Runs `loop.total` outer steps of `step_fn` in `workdir`.

  Args:
    workdir: where metrics.jsonl and checkpoints/ go.
    state: the initial outer state (`core.outer.OuterState`).
    step_fn: the jitted outer step `(state, *step_args(batch_idx)) ->
      (state, metrics)`.
    step_args: `(batch_idx) -> tuple` of the step's other arguments
      (arrays are passed, not closed over, so they are not baked into the
      compiled program).
    n_train: training examples the batch indices draw from.
    loop: when to log, evaluate, checkpoint and stop.
    advice: what a diverged run should change (`guard.advice`).
    evaluate: `(learned) -> validation score in %` of a candidate, or None.
    resume: continue from the newest checkpoint in `workdir`.
    show_progress: print a progress line to stderr.
    stop_at: stop (with a checkpoint) once this many steps are done, as an
      interruption would; a resumed run continues.

  Returns:
    A `LoopResult`.

  Raises:
    guard.DivergedError: the state turned non-finite.
  """
  writer = distributed.is_writer()
  mngr = checkpoint.manager(workdir)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  ckpt, start, elapsed = _start(workdir, state, loop.total, mngr,
                                metrics_path, resume)
  state = ckpt["state"]
  bar = progress_lib.Progress(loop.total, start,
                              enabled=show_progress and writer,
                              time_budget_s=loop.time_budget_s)
  t0, step = time.time() - elapsed, start  # wall time counts across resumes.

  def batch(s):
    return batch_indices(loop.seed, s, n_train, loop.real_batch)

  if step < loop.total:  # compile now, then return the compiler's memory.
    xla_options.precompile(step_fn, state, *step_args(batch(step)))
  guard = guard_lib.Guard(mngr, advice)
  obs = (observe.Observer(workdir, start, loop.total) if writer else
         _NoObserver())
  with open(metrics_path if writer else os.devnull, "a") as log, \
      contextlib.closing(obs):
    while step < loop.total:
      obs.before_step(step)
      state, m = step_fn(state, *step_args(batch(step)))
      step += 1
      obs.after_step(step, state)
      last, is_eval, is_log, interrupted, is_ckpt = _due(
          step, loop, t0, evaluate is not None, stop_at)
      if not (is_log or is_ckpt):
        continue
      # The host syncs here anyway: check the state before anything is
      # written, so no checkpoint or candidate is ever non-finite.
      rec = {"step": step, "time_s": round(time.time() - t0, 3),
             **{k: float(v) for k, v in m.items()}}
      diverged = guard.error(step, rec, _host(state.learned),
                             _host((state.opt_state, state.clip_ema)))
      if diverged is not None:
        guard_lib.write_record(log, rec)
        raise diverged
      if is_eval:
        rec["val_acc"] = _candidate(ckpt, evaluate, state, step, loop.select)
      if is_log:
        guard_lib.write_record(log, rec)
        obs.record(rec)
        bar.update(step, loss=rec["loss"], **(
            {"val_acc": rec["val_acc"]} if "val_acc" in rec else {}))
      ckpt["state"] = state
      if is_ckpt:
        checkpoint.save(mngr, step, ckpt)
      if interrupted:
        return LoopResult(ckpt["best"], state, int(ckpt["best_step"]), None,
                          step, round(time.time() - t0, 1), True)
      if last:
        break
  bar.update(loop.total if step == loop.total else step)
  return _result(ckpt, state, step, guard, loop.select, t0)


def _candidate(ckpt: dict, evaluate: Callable, state, step: int,
               select: bool) -> float:
  """Scores the state's set on validation; keeps it as the best if so."""
  score = round(float(evaluate(state.learned)), 3)
  if not select or score > ckpt["best_val"]:
    ckpt.update(best=_host(state.learned), best_val=np.float64(score),
                best_step=np.int32(step))
  return score


def _result(ckpt: dict, state, step: int, guard, select: bool,
            t0: float) -> LoopResult:
  """The finished run: the best-validation set (or the last one)."""
  scored = float(ckpt["best_val"]) >= 0
  if not scored or not select:  # the last state is the result.
    ckpt.update(best=_host(state.learned), best_step=np.int32(step))
  # Also a set restored from an older run's files: never return a NaN set.
  guard.check(step, None, ckpt["best"])
  return LoopResult(ckpt["best"], state, int(ckpt["best_step"]),
                    float(ckpt["best_val"]) if scored else None, step,
                    round(time.time() - t0, 1), False)
