"""Tests of the decoupled pipeline: teacher, relabel, post-train, recover."""

import dataclasses
import json
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from distill_jax.eval import fit
from distill_jax.methods.decoupled import config as config_lib
from distill_jax.methods.decoupled import posttrain
from distill_jax.methods.decoupled import recover
from distill_jax.methods.decoupled import relabel
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.methods.decoupled import terms
from distill_jax.nn import stat_models
from distill_jax.run import train_decoupled
from tests import test_utils

SHAPE = (12, 12, 1)


def _ds(n_train=240):
  return test_utils.tiny_dataset(n_train=n_train, n_val=30, n_test=60,
                                 shape=SHAPE)


def _teacher_cfg(**kw):
  base = dict(width=8, depth=2, epochs=3, batch_size=32, lr=0.05)
  base.update(kw)
  return teacher_lib.TeacherConfig(**base)


class TeacherTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ds = _ds()

  def test_teacher_learns_and_is_cached(self):
    cache = self.create_tempdir().full_path
    t1 = teacher_lib.load_or_train(_teacher_cfg(), self.ds, cache,
                                   log=lambda *a: None)
    self.assertGreater(t1.meta["test_acc"], 0.6)  # 3 classes: chance 0.33.
    self.assertEqual(t1.meta["class_names"], list(self.ds.class_names))
    self.assertEqual(t1.meta["recipe"]["width"], 8)
    t2 = teacher_lib.load_or_train(_teacher_cfg(), self.ds, cache,
                                   log=lambda *a: None)
    chex.assert_trees_all_equal(t1.variables, t2.variables)
    # Another recipe is another teacher.
    t3 = teacher_lib.load_or_train(_teacher_cfg(seed=1), self.ds, cache,
                                   log=lambda *a: None)
    self.assertNotEqual(t3.meta["recipe"]["seed"], t1.meta["recipe"]["seed"])

  def test_supervised_step_matches_a_python_loop(self):
    # One fit.supervised step == a hand-written SGD step with BN update.
    model = stat_models.build(arch="convnet_bn", width=4, depth=1,
                              num_classes=3, image_shape=SHAPE)
    x = jnp.asarray(self.ds.x_train[:16])
    y = jnp.asarray(self.ds.y_train[:16])
    tx = teacher_lib.optimizer("sgd", 0.1, 10, schedule="constant",
                               weight_decay=0.0)
    trainer = fit.supervised(
        model, tx, x, fit.epoch_batches(16, 8), teacher_lib.cross_entropy,
        targets=lambda key, t, idx, images, mixing: y[idx])
    key = jax.random.key(0)
    per_net = {"init_key": key[None], "key": key[None],
               "keys": jax.random.split(key, 1)[None]}
    got = jax.tree.map(lambda a: a[0, 0], fit.fit(trainer, per_net, (1,)))
    v = model.init(key)
    idx = fit.epoch_batches(16, 8)({"keys": per_net["keys"][0]},
                                   jnp.int32(0))

    def loss(params):
      logits, aux = model.apply({"params": params,
                                 "batch_stats": v["batch_stats"]}, x[idx],
                                train=True)
      return teacher_lib.cross_entropy(logits, y[idx]), aux["batch_stats"]
    g, stats = jax.grad(loss, has_aux=True)(v["params"])
    want = jax.tree.map(lambda p, d: p - 0.1 * d, v["params"], g)
    chex.assert_trees_all_close(got["params"], want, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(got["batch_stats"], stats, rtol=1e-6)


_SHARED = {}


def _trained():
  """(dataset, teacher) trained once for the module."""
  if not _SHARED:
    ds = _ds()
    _SHARED["v"] = ds, teacher_lib.load_or_train(
        _teacher_cfg(), ds, tempfile.mkdtemp(), log=lambda *a: None)
  return _SHARED["v"]


class RelabelTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ds, cls.teacher = _trained()

  def test_stored_labels_reproduce_the_online_teacher(self):
    x = jnp.asarray(self.ds.x_train[:12])
    view = relabel.ViewConfig(crop=True, min_scale=0.3, flip=True, seed=3)
    stored = relabel.store(self.teacher, x, epochs=2, view=view)
    chex.assert_shape(stored.logits, (2, 12, 3))
    self.assertEqual(stored.nbytes(), 2 * 12 * 3 * 2)  # fp16
    # The same (epoch, image) views through the teacher give the same logits,
    # whatever the batch they are in.
    ids = jnp.asarray([7, 2, 5])
    online = relabel.teacher_logits(
        self.teacher, relabel.views(view, 1, ids, x[ids]))
    np.testing.assert_allclose(np.asarray(stored.logits[1][np.asarray(ids)],
                                          np.float32),
                               np.asarray(online), rtol=2e-3, atol=2e-3)
    # The student's targets are read by (epoch, id): epoch of step 5 is 1.
    augment, targets = relabel.stored_targets(stored, steps_per_epoch=4,
                                              temperature=2.0)
    got = targets(None, jnp.int32(5), ids, None, None)
    np.testing.assert_allclose(got, jax.nn.softmax(online / 2.0),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(augment(None, jnp.int32(5), ids, x[ids]),
                               relabel.views(view, 1, ids, x[ids]))

  def test_top_k_labels(self):
    x = jnp.asarray(self.ds.x_train[:6])
    stored = relabel.store(self.teacher, x, epochs=1,
                           view=relabel.ViewConfig(), top_k=2)
    self.assertIsNone(stored.logits)
    dense = np.asarray(stored.dense())
    self.assertEqual(int((dense > -1e3).sum(-1).max()), 2)

  def test_teacher_bn_mode_is_honoured(self):
    x = jnp.asarray(self.ds.x_train[:8])
    ev = relabel.teacher_logits(self.teacher, x, "eval")
    tr = relabel.teacher_logits(self.teacher, x, "train")
    self.assertGreater(float(jnp.max(jnp.abs(ev - tr))), 1e-4)
    # Eval mode: an image's logits do not depend on the rest of the batch.
    np.testing.assert_allclose(
        relabel.teacher_logits(self.teacher, x[:2], "eval"), ev[:2],
        rtol=1e-5, atol=1e-5)
    self.assertGreater(float(jnp.max(jnp.abs(
        relabel.teacher_logits(self.teacher, x[:2], "train") - tr[:2]))),
                       1e-4)
    with self.assertRaisesRegex(ValueError, "teacher_bn='half'"):
      relabel.teacher_logits(self.teacher, x, "half")

  def test_students_beat_chance_on_real_images(self):
    cfg = posttrain.PostTrainConfig(width=8, depth=2, epochs=30, lr=0.01,
                                    eval_every=15, students=2, min_scale=0.5)
    x = self.ds.x_train[:30]
    y = self.ds.y_train[:30]
    for labels in ("hard", "online", "stored"):
      res = posttrain.train_students(
          dataclasses.replace(cfg, labels=labels), x, y, self.ds,
          self.teacher)
      self.assertEqual(res["test_acc"]["n"], 2)
      self.assertIn(res["epoch"], (15, 30))
      self.assertGreater(res["test_acc"]["mean"], 45.0, labels)
      chex.assert_tree_all_finite(res["variables"])


class ConfigTest(absltest.TestCase):

  def test_stage_fields_by_flag_name(self):
    cfg = config_lib.DecoupledConfig(method="delt", ipc=4, seed=3)
    cfg = cfg.replace_flat(teacher_lr=0.1, recover_iterations=40,
                           post_epochs=7, teacher_cache="/c")
    self.assertEqual((cfg.teacher.lr, cfg.recover.iterations,
                      cfg.post.epochs, cfg.teacher_cache),
                     (0.1, 40, 7, "/c"))
    r = cfg.recover_cfg()
    self.assertEqual((r.method, r.ipc, r.seed, r.batch_mode),
                     ("delt", 4, 3, "class_grouped"))
    self.assertEqual(cfg.teacher_cfg().seed, 3)
    self.assertEqual(cfg.post_cfg(labels="hard").labels, "hard")
    self.assertIn("recover_iterations", cfg.flat())
    self.assertNotIn("recover_method", cfg.flat())  # set by the run
    self.assertEqual(config_lib.DecoupledConfig.from_dict(
        json.loads(cfg.to_json())), cfg)
    with self.assertRaisesRegex(ValueError, "recover_magic"):
      cfg.replace_flat(recover_magic=1)
    with self.assertRaisesRegex(ValueError, "iterations=80 must be a "
                                "multiple of rounds=3"):
      config_lib.DecoupledConfig(method="delt").replace_flat(
          recover_iterations=80, recover_rounds=3).validate()


class RecoverTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.ds, cls.teacher = _trained()

  def test_batches(self):
    cfg = recover.RecoverConfig(ipc=4)
    self.assertEqual(cfg.batch_mode, "cross_class")
    self.assertEqual(dataclasses.replace(cfg, method="delt").batch_mode,
                     "class_grouped")
    np.testing.assert_array_equal(recover.batches(cfg, 3),
                                  [[0, 4, 8], [1, 5, 9], [2, 6, 10],
                                   [3, 7, 11]])
    cfg = recover.RecoverConfig(ipc=2, batching="class_grouped",
                                batch_size=4)
    np.testing.assert_array_equal(recover.batches(cfg, 4),
                                  [[0, 1, 2, 3], [4, 5, 6, 7]])
    with self.assertRaisesRegex(ValueError, "batch_size=3"):
      recover.batches(dataclasses.replace(cfg, batch_size=3), 4)
    # Cross-class batches of 2 of the 4 classes (SC-DD's IN-1K: 50 of 1000).
    cfg = recover.RecoverConfig(ipc=2, batch_size=2)
    np.testing.assert_array_equal(recover.batches(cfg, 4),
                                  [[0, 2], [4, 6], [1, 3], [5, 7]])
    with self.assertRaisesRegex(ValueError, "batch_size=3 must divide"):
      recover.batches(dataclasses.replace(cfg, batch_size=3), 4)

  def test_delt_rounds_forward_only_active_images(self):
    cfg = recover.RecoverConfig(method="delt", ipc=10, iterations=80,
                                rounds=8, batching="class_grouped")
    index = recover.batches(cfg, 3)
    sizes = [recover.active_batches(cfg, index, r).shape for r in range(8)]
    # Round sizes [2,2,1,1,1,1,1,1]: 2, 4, 5, ..., 10 active per class.
    self.assertEqual([s[1] for s in sizes], [2, 4, 5, 6, 7, 8, 9, 10])
    self.assertEqual({s[0] for s in sizes}, {3})
    cfg = dataclasses.replace(cfg, batching="cross_class")
    index = recover.batches(cfg, 3)
    self.assertEqual(recover.active_batches(cfg, index, 0).shape, (2, 3))

  def test_recover_gradient_matches_finite_differences(self):
    # float64 central differences of the summed batch losses, in the
    # gradient's direction and two random ones, with a fixed roll + flip.
    cfg = recover.RecoverConfig(ipc=2, crop=False, jitter=1, flip=True,
                                r_bn=0.5)
    objective = terms.sre2l(cfg.r_bn, cfg.first_bn_multiplier)
    index = jnp.asarray(recover.batches(cfg, 3))
    targets = jnp.repeat(jnp.arange(3), 2)
    with jax.enable_x64(True):
      t64 = teacher_lib.Teacher(
          self.teacher.model,
          jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                       self.teacher.variables), self.teacher.meta)
      fn = recover.grad_fn(cfg, t64, objective, SHAPE)
      x = jax.random.normal(jax.random.key(0), (3, 2, *SHAPE), jnp.float64)
      key = jax.random.key(1)
      _, grads, metrics = fn({"x": x}, jnp.int32(0), index, targets, key)
      self.assertIn("bn", metrics)
      g = grads["x"]
      gn = float(jnp.linalg.norm(g))
      self.assertGreater(gn, 0.0)

      def total(x):  # the sum of the per-batch losses.
        return fn({"x": x}, jnp.int32(0), index, targets, key)[0] * \
            index.shape[0]
      dirs = [g / gn] + [jax.random.normal(jax.random.key(10 + i), x.shape,
                                           jnp.float64) for i in range(2)]
      for d in dirs:
        d = d / jnp.linalg.norm(d)
        eps = 1e-5
        fd = float((total(x + eps * d) - total(x - eps * d)) / (2 * eps))
        an = float(jnp.vdot(g, d))
        tol = 1e-6 * gn
        self.assertLess(abs(fd - an), tol, (fd, an))
      # Along the gradient, a zeroed, halved or negated gradient fails.
      fd = float((total(x + 1e-5 * g / gn) - total(x - 1e-5 * g / gn))
                 / 2e-5)
      for wrong in (0.0, 0.5, -1.0):
        self.assertGreater(abs(fd - wrong * gn), 1e3 * 1e-6 * gn)

  def test_recover_loop_lowers_the_loss_and_stays_in_range(self):
    cfg = config_lib.DecoupledConfig(dataset="tiny", ipc=2, val_size=10)
    cfg = cfg.replace_flat(recover_iterations=30, teacher_width=8,
                           teacher_depth=2, recover_jitter=1)
    wd = self.create_tempdir().full_path
    x, info = train_decoupled.recover_images(
        cfg, self.ds, self.teacher, wd, resume=False, show_progress=False)
    chex.assert_shape(x, (3, 2, *SHAPE))
    lo = -0.5 / 0.25
    hi = 0.5 / 0.25
    self.assertGreaterEqual(float(x.min()), lo - 1e-5)
    self.assertLessEqual(float(x.max()), hi + 1e-5)
    self.assertEqual(info["image_iterations"], 30 * 6)
    rows = [json.loads(l) for l in open(f"{wd}/recover/metrics.jsonl")]
    self.assertLess(rows[-1]["loss"], rows[0]["loss"])


if __name__ == "__main__":
  absltest.main()
