"""Baselines: set construction, lr schedules, grid selection on val, k-NN."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.eval import grid as grid_lib
from distill_jax.eval import knn
from distill_jax.methods import baselines
from distill_jax.nn import models
from tests import test_utils

C = test_utils.NUM_CLASSES


class SetsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ds = test_utils.tiny_dataset()

  def test_random_real_layout_and_distinct_images(self):
    x, labels = baselines.random_real(jax.random.key(0), self.ds.x_train,
                                      self.ds.y_train, num_classes=C,
                                      steps=3, per_class=2)
    self.assertEqual(x.shape, (3, 2 * C, *test_utils.IMAGE_SHAPE))
    np.testing.assert_array_equal(labels[1], [0, 0, 1, 1, 2, 2])
    flat = x.reshape(-1, *x.shape[2:])
    lab = labels.reshape(-1)
    for img, c in zip(flat, lab):  # each image is a real one of its class
      match = np.all(self.ds.x_train == img, axis=(1, 2, 3))
      self.assertEqual(self.ds.y_train[match][0], c)
    self.assertLen(np.unique(flat.reshape(len(flat), -1), axis=0), len(flat))
    x2, _ = baselines.random_real(jax.random.key(0), self.ds.x_train,
                                  self.ds.y_train, num_classes=C, steps=3,
                                  per_class=2)
    np.testing.assert_array_equal(x, x2)

  def test_too_few_images_names_the_fix(self):
    with self.assertRaisesRegex(ValueError, "fewer steps"):
      baselines.random_real(jax.random.key(0), self.ds.x_train,
                            self.ds.y_train, num_classes=C, steps=50)

  def test_average_and_kmeans(self):
    avg, labels = baselines.average_real(self.ds.x_train, self.ds.y_train,
                                         num_classes=C, steps=2)
    for c in range(C):
      want = self.ds.x_train[self.ds.y_train == c].mean(0)
      np.testing.assert_allclose(avg[0, c], want, rtol=1e-5)
      np.testing.assert_allclose(avg[1, c], want, rtol=1e-5)
    km, km_labels = baselines.kmeans(self.ds.x_train, self.ds.y_train,
                                     num_classes=C, steps=2, seed=0)
    np.testing.assert_array_equal(km_labels, labels)
    self.assertEqual(km.shape, avg.shape)
    # Two centroids of a class average (weighted) to the class mean region.
    for c in range(C):
      self.assertLess(abs(km[:, c].mean() - avg[0, c].mean()), 0.5)
    km2, _ = baselines.kmeans(self.ds.x_train, self.ds.y_train,
                              num_classes=C, steps=2, seed=0)
    np.testing.assert_array_equal(km, km2)

  def test_optimized_real_keeps_top_fraction(self):
    res = baselines.optimized_real(
        jax.random.key(1), self.ds.x_train, self.ds.y_train,
        lambda xs: float(xs.sum()), num_classes=C, steps=1, num_sets=10)
    self.assertLen(res["top_idx"], 2)
    self.assertEqual(res["scores"][res["top_idx"][0]], res["scores"].max())
    self.assertAlmostEqual(float(res["x"].sum()), res["scores"].max(),
                           places=3)
    with self.assertRaisesRegex(ValueError, "top_frac"):
      baselines.optimized_real(jax.random.key(1), self.ds.x_train,
                               self.ds.y_train, lambda xs: 0.0,
                               num_classes=C, steps=1, top_frac=0.0)


class LrTest(absltest.TestCase):

  def test_schedules(self):
    learned = np.arange(1, 7, dtype=np.float32) / 100  # S=2, E_dd=3
    np.testing.assert_allclose(
        grid_lib.lr_schedule("learned", steps=2, epochs=5,
                             learned_lrs=learned),
        [.01, .02, .03, .04, .05, .06, .01, .02, .03, .04])
    np.testing.assert_allclose(
        grid_lib.lr_schedule("learned", steps=2, epochs=1,
                             learned_lrs=learned), [.01, .02])
    np.testing.assert_allclose(
        grid_lib.lr_schedule(0.1, steps=2, epochs=3), [0.1] * 6)
    with self.assertRaisesRegex(ValueError, "same number of steps"):
      grid_lib.lr_schedule("learned", steps=4, epochs=1,
                           learned_lrs=learned)
    with self.assertRaisesRegex(ValueError, "needs the learned"):
      grid_lib.lr_schedule("learned", steps=2, epochs=1)
    learned_tree = grid_lib.as_learned(np.zeros((2, 3, 4, 4, 1)),
                                       np.asarray([0.01, 0.3]))
    np.testing.assert_allclose(jax.nn.softplus(learned_tree["raw_lr"]),
                               [0.01, 0.3], rtol=1e-5)

  def test_parse_lr_grid(self):
    self.assertEqual(grid_lib.parse_lr_grid("learned, 0.01,0.3"),
                     ("learned", 0.01, 0.3))
    with self.assertRaisesRegex(ValueError, "neither"):
      grid_lib.parse_lr_grid("learned,fast")
    with self.assertRaisesRegex(ValueError, "empty"):
      grid_lib.parse_lr_grid(" , ")


class GridTest(absltest.TestCase):

  def test_selection_uses_validation_and_beats_chance(self):
    ds = test_utils.tiny_dataset(n_train=60, n_val=30, n_test=30)
    cfg = test_utils.tiny_config()
    model = models.build(cfg, ds.image_shape, ds.num_classes)
    p_val = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 2))
    p_test = jax.vmap(model.init)(jax.random.split(jax.random.key(1), 2))
    x, labels = baselines.random_real(jax.random.key(2), ds.x_train,
                                      ds.y_train, num_classes=C, steps=2)
    res = grid_lib.grid_evaluate(
        model.apply, x, labels,
        lr_options=("learned", 1e-4, 0.3), epoch_options=(1, 2),
        learned_lrs=np.full(4, 0.2, np.float32), val_params0=p_val,
        test_params0=p_test, x_val=ds.x_val, y_val=ds.y_val,
        x_test=ds.x_test, y_test=ds.y_test)
    self.assertLen(res["grid"], 6)
    best = max(res["grid"], key=lambda g: g["val_acc"])
    self.assertEqual(res["best"], {"lr": best["lr"],
                                   "epochs": best["epochs"]})
    self.assertNotEqual(res["best"]["lr"], 1e-4)
    self.assertEqual(res["test_acc"].shape, (2,))
    self.assertGreater(res["test_acc"].mean(), 0.6)
    with self.assertRaisesRegex(ValueError, "val_size"):
      grid_lib.grid_evaluate(
          model.apply, x, labels, lr_options=(0.1,), epoch_options=(1,),
          learned_lrs=None, val_params0=p_val, test_params0=p_test,
          x_val=ds.x_val[:0], y_val=ds.y_val[:0], x_test=ds.x_test,
          y_test=ds.y_test)


class KnnTest(absltest.TestCase):

  def test_matches_numpy_reference(self):
    rng = np.random.default_rng(0)
    mem = rng.normal(size=(7, 2, 3, 1)).astype(np.float32)
    mem_y = np.asarray([0, 1, 2, 0, 1, 2, 2], np.int32)
    x = rng.normal(size=(13, 2, 3, 1)).astype(np.float32)
    for metric, order in (("l1", 1), ("l2", 2)):
      dist = np.linalg.norm(x.reshape(13, 1, -1) - mem.reshape(1, 7, -1),
                            ord=order, axis=-1)
      nn = np.argsort(dist, axis=1)
      pred1 = knn.knn_predict(jnp.asarray(mem), jnp.asarray(mem_y),
                              jnp.asarray(x), k=1, metric=metric,
                              num_classes=3, batch=4)
      np.testing.assert_array_equal(pred1, mem_y[nn[:, 0]])
      pred3 = np.asarray(knn.knn_predict(
          jnp.asarray(mem), jnp.asarray(mem_y), jnp.asarray(x), k=3,
          metric=metric, num_classes=3, batch=5))
      for i in range(13):
        votes = np.bincount(mem_y[nn[i, :3]], minlength=3)
        winners = np.flatnonzero(votes == votes.max())
        want = (mem_y[nn[i, 0]] if len(winners) > 1 and
                mem_y[nn[i, 0]] in winners else winners[0])
        self.assertEqual(pred3[i], want)

  def test_grid_and_errors(self):
    ds = test_utils.tiny_dataset()
    x, labels = baselines.random_real(jax.random.key(0), ds.x_train,
                                      ds.y_train, num_classes=C, steps=3)
    res = knn.knn_grid([x, x], labels, x_val=ds.x_val, y_val=ds.y_val,
                       x_test=ds.x_test, y_test=ds.y_test,
                       num_classes=C)
    self.assertLen(res["grid"], 4)
    self.assertEqual(res["test_acc"].shape, (2,))
    self.assertGreater(res["test_acc"].mean(), 0.8)
    with self.assertRaisesRegex(ValueError, "metric"):
      knn.knn_predict(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32),
                      jnp.zeros((1, 3)), k=1, metric="cos",
                      num_classes=2)
    with self.assertRaisesRegex(ValueError, "k=5"):
      knn.knn_predict(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32),
                      jnp.zeros((1, 3)), k=5, metric="l2",
                      num_classes=2)


class EvaluateAllTest(absltest.TestCase):

  def test_all_rows(self):
    ds = test_utils.tiny_dataset(n_train=60, n_val=15, n_test=15)
    model = models.build(test_utils.tiny_config(), ds.image_shape, C)
    p_val = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 2))
    p_test = jax.vmap(model.init)(jax.random.split(jax.random.key(1), 4))
    rows = baselines.evaluate_all(
        jax.random.key(0), model.apply, ds, steps=2, per_class=1,
        learned_lrs=np.full(4, 0.1, np.float32), val_params0=p_val,
        test_params0=p_test, lr_options=("learned", 0.1), epoch_options=(1,),
        random_sets=2, optimized_sets=5, kmeans_seeds=2)
    self.assertEqual(set(rows), {"random_real", "optimized_real", "kmeans",
                                 "average_real", "knn_random_real",
                                 "knn_kmeans"})
    self.assertEqual(rows["random_real"]["test_acc"]["n"], 4)
    self.assertEqual(rows["optimized_real"]["kept"], 1)
    self.assertEqual(rows["knn_kmeans"]["test_acc"]["n"], 2)
    some = baselines.evaluate_all(
        jax.random.key(0), model.apply, ds, steps=2, per_class=1,
        learned_lrs=np.full(4, 0.1, np.float32), val_params0=p_val,
        test_params0=p_test, lr_options=("learned", 0.1), epoch_options=(1,),
        random_sets=2, optimized_sets=5, rows=("random_real", "average_real"))
    self.assertEqual(set(some), {"random_real", "average_real"})
    for name in some:  # the same computation as in the full table.
      self.assertEqual(some[name]["test_acc"], rows[name]["test_acc"])
    with self.assertRaisesRegex(ValueError, "Unknown baseline rows"):
      baselines.evaluate_all(
          jax.random.key(0), model.apply, ds, steps=2, per_class=1,
          learned_lrs=None, val_params0=p_val, test_params0=p_test,
          rows=("kmeans_plus",))


if __name__ == "__main__":
  absltest.main()
