"""A diverging run stops with a one-line error and writes no set.

Tiny DD and RaT-BPTT runs are driven to NaN with outer_lr=1e12 (in-process),
and one experiment entry point as a subprocess (exit status, stderr).
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest
import chex
import numpy as np

from distill_jax.methods import rat_bptt
from distill_jax.run import checkpoint
from distill_jax.run import guard
from distill_jax.run import loop as loop_lib
from distill_jax.run import train_dd as train
from distill_jax.run import train_rat as rat_train
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")


def _reject_constant(name):
  raise ValueError(f"metrics.jsonl holds a bare {name}")


def strict_records(workdir: str) -> list[dict]:
  """metrics.jsonl parsed as strict JSON (a bare NaN/Infinity raises)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l, parse_constant=_reject_constant) for l in f]


def newest_checkpoint(workdir: str) -> tuple[int | None, list]:
  """(step, leaves) of the newest checkpoint on disk (None, [] if none)."""
  mngr = checkpoint.manager(workdir)
  step = mngr.latest_step()
  if step is None:
    return None, []
  with np.load(mngr.path(step), allow_pickle=False) as z:
    return step, [z[k] for k in z.files if k.startswith("leaf_")]


class GuardUnitTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mngr = checkpoint.manager(self.create_tempdir().full_path)
    self.guard = guard.Guard(self.mngr, guard.advice(1e12))

  def test_finite_state_passes(self):
    self.assertIsNone(self.guard.error(
        5, {"loss": 1.0, "grad_norm": 0.5}, {"x": np.ones(3)},
        {"mu": np.zeros(3), "count": np.int32(2)}))
    self.guard.check(5, None, {"x": np.ones(3)})

  def test_each_cause_is_named(self):
    cases = [
        ({"loss": NAN, "grad_norm": 1.0}, {"x": np.ones(2)}, None,
         "the meta-loss is NaN."),
        ({"loss": 1.0, "grad_norm": INF}, {"x": np.ones(2)}, None,
         "the gradient norm is inf."),
        ({"loss": 1.0}, {"x": np.ones(2), "raw_lr": np.array([1.0, NAN])},
         None, "the distilled data (raw_lr) turned non-finite."),
        ({"loss": 1.0}, {"x": np.ones(2)}, {"nu": np.array([INF])},
         "the outer optimiser state turned non-finite."),
        ({"loss": NAN}, {"x": np.array([NAN])}, None,
         "the meta-loss is NaN; the distilled data (x) is non-finite too."),
    ]
    for metrics, learned, opt_state, cause in cases:
      err = self.guard.error(7, metrics, learned, opt_state)
      self.assertIsInstance(err, guard.DivergedError)
      self.assertIsInstance(err, ValueError)
      msg = str(err)
      self.assertNotIn("\n", msg)
      self.assertEqual(err.step, 7)
      self.assertStartsWith(msg, f"diverged at outer step 7: {cause}")
      self.assertIn("Lower --outer_lr (now 1e+12)", msg)
      self.assertIn("no checkpoint had been written yet", msg)

  def test_names_the_last_checkpoint_and_clipping(self):
    checkpoint.save(self.mngr, 4, {"x": np.ones(2)})
    g = guard.Guard(self.mngr, guard.advice(0.5, clip_coef=0.0))
    with self.assertRaisesRegex(
        guard.DivergedError,
        r"^diverged at outer step 6: the meta-loss is NaN\. Lower "
        r"--outer_lr \(now 0\.5\) or enable gradient clipping "
        r"\(--clip_coef=0\.9\); the last finite checkpoint \(step 4\) is "
        r"kept in .*checkpoints\.$"):
      g.check(6, {"loss": NAN}, {"x": np.ones(2)})
    self.assertNotIn("clipping", guard.advice(0.5, clip_coef=0.9))

  def test_metrics_lines_are_strict_json(self):
    rec = {"step": 3, "loss": NAN, "grad_norm": INF, "lr": -INF,
           "val_acc": 0.5, "nested": {"a": NAN, "b": 1.0}}
    line = guard.dumps(rec)
    got = json.loads(line, parse_constant=_reject_constant)
    self.assertEqual(got, {"step": 3, "loss": None, "grad_norm": None,
                           "lr": None, "val_acc": 0.5,
                           "nested": {"a": None, "b": 1.0},
                           "nonfinite": ["loss", "grad_norm", "lr",
                                         "nested/a"]})
    self.assertEqual(json.loads(guard.dumps({"step": 1, "loss": 0.25})),
                     {"step": 1, "loss": 0.25})

  def test_truncate_metrics_rewrites_old_nan_and_drops_a_torn_line(self):
    path = os.path.join(self.create_tempdir().full_path, "metrics.jsonl")
    with open(path, "w") as f:
      f.write('{"step": 1, "time_s": 1.5, "loss": NaN}\n'
              '{"step": 2, "time_s": 2.5, "loss": 1.0}\n'
              '{"step": 3, "time_s": 3.5, "loss": 0.5}\n'
              '{"step": 4, "ti')
    self.assertEqual(loop_lib.truncate_metrics(path, 9), 3.5)
    with open(path) as f:
      recs = [json.loads(l, parse_constant=_reject_constant) for l in f]
    self.assertEqual([r["step"] for r in recs], [1, 2, 3])
    self.assertEqual(recs[0]["nonfinite"], ["loss"])


class DivergenceTest(absltest.TestCase):
  """outer_lr=1e12 turns the tiny runs' data into NaN at outer step 2."""

  def setUp(self):
    super().setUp()
    self.ds = test_utils.tiny_dataset()

  def _check_stopped(self, err, wd):
    msg = str(err)
    self.assertNotIn("\n", msg)
    self.assertRegex(msg, r"^diverged at outer step \d+: ")
    self.assertIn("(now 1e+12)", msg)
    self.assertFalse(os.path.exists(os.path.join(wd, "distilled.npz")))
    self.assertFalse(os.path.exists(os.path.join(wd, "report.json")))
    recs = strict_records(wd)
    self.assertEqual(recs[-1]["step"], err.step)
    self.assertIn("loss", recs[-1]["nonfinite"])
    self.assertIsNone(recs[-1]["loss"])
    step, leaves = newest_checkpoint(wd)
    # checkpoint_every=1: the step before the divergence is on disk, finite.
    self.assertEqual(step, err.step - 1)
    self.assertIn(f"last finite checkpoint (step {step})", msg)
    chex.assert_tree_all_finite(
        [l for l in leaves if np.issubdtype(l.dtype, np.inexact)])

  def test_dd_run(self):
    wd = self.create_tempdir().full_path
    # Fixed lrs: with learned ones the tiny MLP's lrs collapse to 0 instead.
    cfg = test_utils.tiny_config(outer_steps=4, outer_lr=1e12, learn_lr=False,
                                 checkpoint_every=1, eval_every=1,
                                 val_size=12)
    with self.assertRaises(guard.DivergedError) as cm:
      train.run(cfg, wd, dataset=self.ds, show_progress=False)
    self._check_stopped(cm.exception, wd)
    self.assertIn("Lower --outer_lr", str(cm.exception))
    best = os.path.join(wd, "best_val.npz")
    if os.path.exists(best):  # a candidate of a step before the divergence.
      with np.load(best) as z:
        chex.assert_tree_all_finite(dict(z))

  def test_rat_bptt_run(self):
    wd = self.create_tempdir().full_path
    cfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=2, batch_per_class=1, total_steps=4,
        window=2, truncation="random", real_batch=12, num_inits=2,
        inner_opt="sgd", inner_lr=0.1, learn_labels=True, outer_lr=1e12,
        outer_steps=4, eval_every=2, eval_budgets=(2, 4), val_nets=1,
        eval_nets=1, log_every=1, checkpoint_every=1, val_size=12).validate()
    with self.assertRaises(guard.DivergedError) as cm:
      rat_train.run(cfg, wd, dataset=self.ds, show_progress=False)
    self._check_stopped(cm.exception, wd)


class EntryPointTest(absltest.TestCase):

  def test_diverging_experiment_exits_with_one_line_error(self):
    tmp = self.create_tempdir().full_path
    data_dir = test_utils.write_fake_datasets(os.path.join(tmp, "data"),
                                              n_train=100, n_test=20)
    wd = os.path.join(tmp, "wd")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_DISABLE_MOST_OPTIMIZATIONS="true",
               TFDS_DATA_DIR=os.path.join(tmp, "tfds"))
    env.pop("DISTILL_JAX_DATA_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.dd_fashion_mnist",
         "--preset=smoke", "--outer_lr=1e12", "--train_limit=100",
         "--val_size=20", f"--workdir={wd}", f"--data_dir={data_dir}",
         "--noprogress"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300, check=False)
    self.assertEqual(proc.returncode, 4, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    self.assertStartsWith(last, "error: diverged at outer step ")
    self.assertIn("--outer_lr (now 1e+12)", last)
    self.assertNotIn("Traceback", proc.stderr)
    self.assertNotIn("test accuracy", proc.stdout)
    self.assertFalse(os.path.exists(os.path.join(wd, "distilled.npz")))
    self.assertNotEmpty(strict_records(wd))


if __name__ == "__main__":
  absltest.main()
