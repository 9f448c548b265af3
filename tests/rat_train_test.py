"""RaT-BPTT host loop: an interrupted and resumed run equals an
uninterrupted one; resuming with other flags is refused."""

import dataclasses
import json
import os

from absl.testing import absltest
import numpy as np

from distill_jax.methods import rat_bptt
from distill_jax.run import loop as loop_lib
from distill_jax.run import storage
from distill_jax.run import train_rat as rat_train
from tests import test_utils


def _cfg(**kw):
  base = dict(arch="mlp", mlp_hidden=(8,), ipc=2, batch_per_class=1,
              total_steps=4, window=2, truncation="random",
              syn_aug="flip_rotate", real_aug="flip_rotate", real_batch=12,
              num_inits=2, inner_opt="sgd", inner_lr=0.1, learn_labels=True,
              outer_lr=0.05, outer_steps=6, eval_every=3, eval_budgets=(2, 4),
              val_nets=1, eval_nets=2, log_every=1, checkpoint_every=0,
              val_size=12)
  base.update(kw)
  return rat_bptt.RatConfig(**base).validate()


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(l) for l in f]
  return [{k: v for k, v in r.items() if k != "time_s"} for r in recs]


class ResumeTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ds = test_utils.tiny_dataset()

  def _run(self, cfg, workdir, **kw):
    return rat_train.run(cfg, workdir, dataset=self.ds, show_progress=False,
                         **kw)

  def test_interrupted_run_reaches_same_result(self):
    cfg = _cfg()
    full = self.create_tempdir().full_path
    want = self._run(cfg, full)
    part = self.create_tempdir().full_path
    # Stops after step 4: past the step-3 candidate, before the last one.
    self.assertEqual(self._run(cfg, part, stop_at=4), {"interrupted_at": 4})
    self.assertFalse(os.path.exists(os.path.join(part, "distilled.npz")))
    got = self._run(cfg, part, resume=True)
    a = storage.load_distilled_set(os.path.join(full, "distilled.npz"))
    b = storage.load_distilled_set(os.path.join(part, "distilled.npz"))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.soft_labels, b.soft_labels)
    # 2 images per class, class-major, with learned soft labels; inner SGD
    # at a fixed lr (no learned lrs) on class-balanced subsamples.
    self.assertEqual((a.format_version, a.method, a.dataset),
                     (2, "rat_bptt", "blobs"))
    self.assertEqual(a.images.shape, (6, 4, 4, 1))
    np.testing.assert_array_equal(a.labels, [0, 0, 1, 1, 2, 2])
    self.assertEqual(a.soft_labels.shape, (6, 3))
    self.assertIsNone(a.raw_lr)
    self.assertIsNone(a.schedule)
    self.assertIsNone(a.zca)
    self.assertEqual(a.class_names, self.ds.class_names)
    self.assertEqual(a.model["arch"], "mlp")
    self.assertEqual(a.metadata["config"]["ipc"], 2)
    self.assertEqual(a.metadata["best_step"], want["best_step"])
    self.assertEqual(_records(full), _records(part))
    self.assertEqual([r["step"] for r in _records(part)], list(range(1, 7)))
    for k in ("best_step", "best_candidate_val_acc", "selected_budget",
              "test_acc", "val_acc_by_budget"):
      self.assertEqual(want[k], got[k], k)

  def test_clock_continues_across_resume(self):
    wd = self.create_tempdir().full_path
    self._run(_cfg(), wd, stop_at=4)
    path = os.path.join(wd, "metrics.jsonl")
    with open(path) as f:
      recs = [json.loads(l) for l in f]
    recs[-1]["time_s"] = 1000.0  # as if steps 1-4 had taken 1000 s.
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in recs)
    got = self._run(_cfg(), wd, resume=True)
    with open(path) as f:
      times = [json.loads(l)["time_s"] for l in f]
    self.assertLen(times, 6)
    self.assertTrue(all(t > 1000.0 for t in times[4:]), times)
    self.assertGreater(got["train_time_s"], 1000.0)

  def test_resume_may_change_outer_steps(self):
    # A run stopped (with a checkpoint) at step 3 and resumed with
    # outer_steps=3 ends as an uninterrupted 3-step run does.
    want = self._run(_cfg(outer_steps=3), self.create_tempdir().full_path)
    wd = self.create_tempdir().full_path
    self.assertEqual(self._run(_cfg(), wd, stop_at=3), {"interrupted_at": 3})
    got = self._run(_cfg(outer_steps=3), wd, resume=True)
    for k in ("outer_steps", "best_step", "best_candidate_val_acc",
              "selected_budget", "test_acc"):
      self.assertEqual(want[k], got[k], k)
    # Fewer steps than the newest checkpoint: a clear error, and the
    # refused resume leaves config.json as it was.
    with open(os.path.join(wd, "config.json")) as f:
      before = f.read()
    with self.assertRaisesRegex(ValueError, "at outer step 3, past "
                                "outer_steps=2"):
      self._run(_cfg(outer_steps=2), wd, resume=True)
    with open(os.path.join(wd, "config.json")) as f:
      self.assertEqual(before, f.read())

  def test_resume_with_other_config_is_refused(self):
    wd = self.create_tempdir().full_path
    self._run(_cfg(), wd, stop_at=2)
    with self.assertRaisesRegex(ValueError, r"different configuration.*"
                                r"outer_lr"):
      self._run(_cfg(outer_lr=0.5), wd, resume=True)
    # Run-control fields may change.
    out = self._run(_cfg(log_every=2), wd, resume=True, stop_at=3)
    self.assertEqual(out, {"interrupted_at": 3})
    # A run written before a field existed resumes when the field has its
    # default, and is refused when it does not.
    path = os.path.join(wd, "config.json")
    with open(path) as f:
      old = json.load(f)
    del old["boost_mode"]
    with open(path, "w") as f:
      json.dump(old, f)
    out = self._run(_cfg(), wd, resume=True, stop_at=4)
    self.assertEqual(out, {"interrupted_at": 4})
    with open(path, "w") as f:
      json.dump(old, f)
    with self.assertRaisesRegex(ValueError, "boost_mode"):
      loop_lib.check_resume_config(path, _cfg(boost_mode="slow"),
                                   rat_train._RUN_CONTROL)


if __name__ == "__main__":
  absltest.main()
