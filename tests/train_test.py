"""The run loop: outputs, resume equals an uninterrupted run, errors."""

import dataclasses
import json
import os

from absl.testing import absltest
import jax
import numpy as np

from distill_jax import distilled
from distill_jax import storage
from distill_jax import train
from tests import test_utils


class RunTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ds = test_utils.tiny_dataset()
    self.cfg = test_utils.tiny_config(outer_steps=6, eval_every=3)

  def test_outputs(self):
    wd = self.create_tempdir().full_path
    report = train.run(self.cfg, wd, dataset=self.ds, show_progress=False)
    for name in ("config.json", "metrics.jsonl", "distilled.npz",
                 "report.json", "steps/step_00.png", "steps/step_01.png"):
      self.assertTrue(os.path.exists(os.path.join(wd, name)), name)
    self.assertEqual(report["test_acc"]["n"], self.cfg.eval_inits)
    self.assertBetween(report["test_acc"]["mean"], 0.0, 100.0)
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      recs = [json.loads(l) for l in f]
    self.assertEqual([r["step"] for r in recs], list(range(1, 7)))
    self.assertIn("val_acc", recs[2])
    d = storage.load_distilled(os.path.join(wd, "distilled.npz"))
    self.assertEqual(d.x.shape, (2, 3, 4, 4, 1))
    np.testing.assert_array_equal(d.step_order, [0, 1, 0, 1])
    self.assertEqual(d.metadata["dataset"], "blobs")

  def test_resume_reaches_same_result(self):
    full = self.create_tempdir().full_path
    train.run(self.cfg, full, dataset=self.ds, show_progress=False)
    part = self.create_tempdir().full_path
    out = train.run(self.cfg, part, dataset=self.ds, show_progress=False,
                    stop_at=4)
    self.assertEqual(out, {"interrupted_at": 4})
    train.run(self.cfg, part, dataset=self.ds, show_progress=False,
              resume=True)
    a = storage.load_distilled(os.path.join(full, "distilled.npz"))
    b = storage.load_distilled(os.path.join(part, "distilled.npz"))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.raw_lr, b.raw_lr)
    with open(os.path.join(part, "metrics.jsonl")) as f:
      steps = [json.loads(l)["step"] for l in f]
    self.assertEqual(steps, list(range(1, 7)))

  def test_same_seed_same_result_and_seed_matters(self):
    runs = []
    for seed in (0, 0, 1):
      wd = self.create_tempdir().full_path
      cfg = dataclasses.replace(self.cfg, seed=seed)
      train.run(cfg, wd, dataset=self.ds, show_progress=False)
      runs.append(storage.load_distilled(os.path.join(wd, "distilled.npz")))
    np.testing.assert_array_equal(runs[0].x, runs[1].x)
    self.assertFalse(np.allclose(runs[0].x, runs[2].x))

  def test_resume_with_other_config_is_refused(self):
    wd = self.create_tempdir().full_path
    train.run(self.cfg, wd, dataset=self.ds, show_progress=False, stop_at=2)
    with self.assertRaisesRegex(ValueError, r"different configuration.*lr"):
      train.run(dataclasses.replace(self.cfg, lr_init=0.5), wd,
                dataset=self.ds, show_progress=False, resume=True)

  def test_fixed_init_saves_the_network(self):
    wd = self.create_tempdir().full_path
    cfg = dataclasses.replace(self.cfg, init_mode="fixed", eval_inits=1)
    report = train.run(cfg, wd, dataset=self.ds, show_progress=False)
    self.assertEqual(report["test_acc"]["n"], 1)
    d = storage.load_distilled(os.path.join(wd, "distilled.npz"))
    self.assertIn("Dense_0", d.init_params)

  def test_real_image_init_starts_from_training_images(self):
    wd = self.create_tempdir().full_path
    cfg = dataclasses.replace(self.cfg, image_init="real", outer_steps=1,
                              outer_lr=1e-12, select_on_val=False)
    train.run(cfg, wd, dataset=self.ds, show_progress=False)
    d = storage.load_distilled(os.path.join(wd, "distilled.npz"))
    x_train = np.asarray(self.ds.x_train).reshape(len(self.ds.y_train), -1)
    for s in range(d.x.shape[0]):
      for j in range(d.x.shape[1]):
        dist = np.abs(x_train - d.x[s, j].reshape(1, -1)).max(axis=1)
        i = int(dist.argmin())
        self.assertLess(dist[i], 1e-6)  # still (almost) a training image
        self.assertEqual(int(self.ds.y_train[i]), int(d.labels[s, j]))

  def test_real_image_init_needs_enough_images(self):
    with self.assertRaisesRegex(ValueError, "image_init=noise"):
      distilled.real_images(jax.random.key(0), np.zeros((3, 1), np.int32),
                            np.zeros((2, 4, 4, 1)), np.zeros((2,), np.int32))

  def test_batch_indices_cover_each_epoch(self):
    idx = np.concatenate([train.batch_indices(0, s, 60, 16) for s in range(3)])
    self.assertLen(np.unique(idx), 48)
    np.testing.assert_array_equal(train.batch_indices(0, 5, 60, 16),
                                  train.batch_indices(0, 5, 60, 16))

  def test_real_batch_too_large(self):
    cfg = dataclasses.replace(self.cfg, real_batch=1000)
    with self.assertRaisesRegex(ValueError, "real_batch=1000 exceeds"):
      train.run(cfg, self.create_tempdir().full_path, dataset=self.ds,
                show_progress=False)


if __name__ == "__main__":
  absltest.main()


class SelectionTest(absltest.TestCase):

  def test_final_set_is_best_on_validation(self):
    ds = test_utils.tiny_dataset()
    cfg = test_utils.tiny_config(outer_steps=6, eval_every=2)
    wd = self.create_tempdir().full_path
    report = train.run(cfg, wd, dataset=ds, show_progress=False)
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      vals = {r["step"]: r["val_acc"] for r in map(json.loads, f)
              if "val_acc" in r}
    sel = report["selected_checkpoint"]
    self.assertEqual(sel["rule"], "best validation accuracy")
    self.assertEqual(sel["val_acc"], max(vals.values()))
    self.assertEqual(vals[sel["step"]], max(vals.values()))
    with np.load(os.path.join(wd, "best_val.npz")) as z:
      best_x = z["learned/x"]
    d = storage.load_distilled(os.path.join(wd, "distilled.npz"))
    np.testing.assert_array_equal(d.x, best_x)

  def test_last_when_not_selecting(self):
    ds = test_utils.tiny_dataset()
    cfg = test_utils.tiny_config(outer_steps=4, eval_every=2,
                                 select_on_val=False)
    report = train.run(cfg, self.create_tempdir().full_path, dataset=ds,
                       show_progress=False)
    self.assertEqual(report["selected_checkpoint"],
                     {"step": 4, "rule": "last"})
