"""The run loop: outputs, resume equals an uninterrupted run, errors."""

import dataclasses
import json
import os

from absl.testing import absltest
import jax
import numpy as np

from distill_jax.eval import replay as evaluate
from distill_jax.methods import dd_data as distilled
from distill_jax.nn import models
from distill_jax.run import loop as loop_lib
from distill_jax.run import storage
from distill_jax.run import train_dd as train
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
    s = storage.load_distilled_set(os.path.join(wd, "distilled.npz"))
    self.assertEqual((s.format_version, s.method, s.dataset),
                     (2, "dd", "blobs"))
    self.assertEqual(s.class_names, self.ds.class_names)
    self.assertEqual(s.model, {"arch": "mlp", "init": self.cfg.init,
                               "width": self.cfg.width,
                               "depth": self.cfg.depth, "norm": self.cfg.norm,
                               "pooling": self.cfg.pooling,
                               "mlp_hidden": [8]})
    self.assertEqual(s.metadata["config"],
                     json.loads(json.dumps(dataclasses.asdict(self.cfg))))
    np.testing.assert_array_equal(s.labels, [0, 1, 2, 0, 1, 2])
    self.assertIsNone(s.soft_labels)
    np.testing.assert_array_equal(  # step t sees the images of step t % 2.
        s.schedule, [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]])
    np.testing.assert_allclose(s.lrs, report["learned_lrs"], rtol=1e-6)
    d = s.as_dd()
    self.assertEqual(d.x.shape, (2, 3, 4, 4, 1))
    self.assertEqual((d.steps, d.epochs), (2, 2))

  def test_resume_reaches_same_result(self):
    full = self.create_tempdir().full_path
    train.run(self.cfg, full, dataset=self.ds, show_progress=False)
    part = self.create_tempdir().full_path
    out = train.run(self.cfg, part, dataset=self.ds, show_progress=False,
                    stop_at=4)
    self.assertEqual(out, {"interrupted_at": 4})
    train.run(self.cfg, part, dataset=self.ds, show_progress=False,
              resume=True)
    a = storage.load_distilled_set(os.path.join(full, "distilled.npz")).as_dd()
    b = storage.load_distilled_set(os.path.join(part, "distilled.npz")).as_dd()
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.raw_lr, b.raw_lr)

    def metrics(wd):  # every logged value but the wall-clock time.
      with open(os.path.join(wd, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(l).items() if k != "time_s"}
                for l in f]
    self.assertEqual([r["step"] for r in metrics(part)], list(range(1, 7)))
    self.assertEqual(metrics(part), metrics(full))
    self.assertIn("val_acc", metrics(part)[2])

    def final_checkpoint(wd):  # outer state, optimiser moments, best set.
      ckpt = os.path.join(wd, "checkpoints", "ckpt_000000006.npz")
      with np.load(ckpt) as z:
        return {k: z[k] for k in z.files}
    ca, cb = final_checkpoint(full), final_checkpoint(part)
    self.assertEqual(sorted(ca), sorted(cb))
    for k in ca:
      np.testing.assert_array_equal(ca[k], cb[k], err_msg=k)

  def test_same_seed_same_result_and_seed_matters(self):
    runs = []
    for seed in (0, 0, 1):
      wd = self.create_tempdir().full_path
      cfg = dataclasses.replace(self.cfg, seed=seed)
      train.run(cfg, wd, dataset=self.ds, show_progress=False)
      runs.append(storage.load_distilled_set(
          os.path.join(wd, "distilled.npz")).as_dd())
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
    s = storage.load_distilled_set(os.path.join(wd, "distilled.npz"))
    self.assertEqual(s.metadata["init_mode"], "fixed")
    self.assertEqual(set(s.init_params), {"Dense_0", "Dense_1"})
    # The stored set and network reproduce the reported replay accuracy.
    model = models.build(cfg, self.ds.image_shape, self.ds.num_classes)
    d = s.as_dd()
    acc = evaluate.replay_accuracy(
        model.apply, jax.tree.map(lambda a: a[None], s.init_params),
        d.learned(), d.labels, self.ds.x_test, self.ds.y_test,
        epochs=d.epochs, batch=cfg.eval_batch)
    self.assertAlmostEqual(100 * float(acc[0]), report["test_acc"]["mean"],
                           places=4)

  def test_real_image_init_starts_from_training_images(self):
    wd = self.create_tempdir().full_path
    cfg = dataclasses.replace(self.cfg, image_init="real", outer_steps=1,
                              outer_lr=1e-12, select_on_val=False)
    train.run(cfg, wd, dataset=self.ds, show_progress=False)
    d = storage.load_distilled_set(os.path.join(wd, "distilled.npz")).as_dd()
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
    idx = np.concatenate([loop_lib.batch_indices(0, s, 60, 16)
                          for s in range(3)])
    self.assertLen(np.unique(idx), 48)
    np.testing.assert_array_equal(loop_lib.batch_indices(0, 5, 60, 16),
                                  loop_lib.batch_indices(0, 5, 60, 16))

  def test_real_batch_too_large(self):
    cfg = dataclasses.replace(self.cfg, real_batch=1000)
    with self.assertRaisesRegex(ValueError, "real_batch=1000 exceeds"):
      train.run(cfg, self.create_tempdir().full_path, dataset=self.ds,
                show_progress=False)


class SharedFeaturesTest(absltest.TestCase):
  """RaT-BPTT's inner options work for DD through the one core."""

  def test_augmentation_inner_adam_soft_labels_zca(self):
    ds = test_utils.tiny_dataset()
    base = test_utils.tiny_config(outer_steps=4, eval_every=0, lr_init=0.01)
    cfg = dataclasses.replace(
        base, syn_aug="flip_rotate", real_aug="flip_rotate", inner_opt="adam",
        learn_labels=True, zca=True)
    wd = self.create_tempdir().full_path
    report = train.run(cfg, wd, dataset=ds, show_progress=False)
    s = storage.load_distilled_set(os.path.join(wd, "distilled.npz"))
    self.assertEqual(s.soft_labels.shape, (6, test_utils.NUM_CLASSES))
    self.assertTrue(np.all(s.soft_labels >= 0))
    self.assertIsNotNone(s.zca)
    self.assertTrue(np.all(np.isfinite(s.images)))
    self.assertBetween(report["test_acc"]["mean"], 0.0, 100.0)
    # Each option changes what is learned.
    plain = self.create_tempdir().full_path
    train.run(base, plain, dataset=ds, show_progress=False)
    p = storage.load_distilled_set(os.path.join(plain, "distilled.npz"))
    self.assertFalse(np.allclose(p.images, s.images))
    for option in (dict(syn_aug="flip_rotate"), dict(inner_opt="adam")):
      wd_o = self.create_tempdir().full_path
      train.run(dataclasses.replace(base, **option), wd_o, dataset=ds,
                show_progress=False)
      o = storage.load_distilled_set(os.path.join(wd_o, "distilled.npz"))
      self.assertFalse(np.allclose(o.images, p.images), option)


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
    # The written set is the state at the selected step: a run that stops
    # there and keeps its last state writes the same images.
    wd2 = self.create_tempdir().full_path
    train.run(dataclasses.replace(cfg, outer_steps=sel["step"],
                                  select_on_val=False), wd2, dataset=ds,
              show_progress=False)
    d, d2 = (storage.load_distilled_set(os.path.join(w, "distilled.npz"))
             .as_dd() for w in (wd, wd2))
    np.testing.assert_array_equal(d.x, d2.x)

  def test_last_when_not_selecting(self):
    ds = test_utils.tiny_dataset()
    cfg = test_utils.tiny_config(outer_steps=4, eval_every=2,
                                 select_on_val=False)
    report = train.run(cfg, self.create_tempdir().full_path, dataset=ds,
                       show_progress=False)
    self.assertEqual(report["selected_checkpoint"],
                     {"step": 4, "rule": "last"})
