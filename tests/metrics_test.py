"""eval.metrics: DD-Ranking scores, storage, diversity, TD, mean_std."""

import math

from absl.testing import absltest
import jax
import numpy as np

from distill_jax.eval import metrics
from distill_jax.eval import td as td_lib

jax.config.update("jax_numpy_rank_promotion", "raise")

E = math.e


def lrs_by_hand(a):
  return (math.exp(a) - math.exp(-1.0)) / (E - math.exp(-1.0))


class DDRankingTest(absltest.TestCase):

  def test_hand_numbers(self):
    # full 0.90, syn hard 0.40 -> HLR 0.50; syn 0.60, rand 0.55 -> IOR 0.05.
    h = metrics.hlr(0.90, 0.40)
    i = metrics.ior(0.60, 0.55)
    a = metrics.alpha(h, i)
    self.assertAlmostEqual(float(h), 0.50)
    self.assertAlmostEqual(float(i), 0.05)
    self.assertAlmostEqual(float(a), 0.5 * 0.05 - 0.5 * 0.50)  # -0.225
    self.assertAlmostEqual(float(a), -0.225)
    expected = (math.exp(-0.225) - math.exp(-1)) / (E - math.exp(-1))
    self.assertAlmostEqual(float(metrics.lrs(a)), expected)
    self.assertAlmostEqual(float(metrics.lrs(a)), 0.183218, places=6)
    self.assertAlmostEqual(float(metrics.alpha(h, i, w=1.0)), 0.05)

  def test_lrs_bounds_and_monotone(self):
    a = np.linspace(-1.0, 1.0, 101)
    v = metrics.lrs(a)
    self.assertAlmostEqual(float(v[0]), 0.0)
    self.assertAlmostEqual(float(v[-1]), 1.0)
    self.assertTrue(np.all(np.diff(v) > 0))
    self.assertTrue(np.all((v >= 0) & (v <= 1)))

  def test_rejects_percent_inputs(self):
    with self.assertRaises(ValueError):
      metrics.hlr(90.0, 40.0)

  def test_percent_form(self):
    d = metrics.dd_ranking_percent(0.90, 0.40, 0.60, 0.55)
    self.assertAlmostEqual(d["hlr"], 50.0)
    self.assertAlmostEqual(d["ior"], 5.0)
    self.assertAlmostEqual(d["alpha"], -22.5)
    # LRS of a percent-scale alpha: exp(-22.5) ~ 0, so below 0.
    self.assertAlmostEqual(d["lrs"], lrs_by_hand(-22.5))
    self.assertAlmostEqual(d["lrs"], -0.156518, places=6)
    self.assertLess(d["lrs"], 0.0)
    same = metrics.dd_ranking_percent(90.0, 40.0, 60.0, 55.0,
                                      inputs_in_percent=True)
    self.assertAlmostEqual(same["lrs"], d["lrs"])
    # Not 100x the fraction LRS.
    self.assertNotAlmostEqual(d["lrs"],
                              100 * float(metrics.lrs(-0.225)), places=1)
    # A positive percent alpha leaves [0, 1] upwards.
    up = metrics.dd_ranking_percent(0.50, 0.50, 0.60, 0.50)
    self.assertAlmostEqual(up["alpha"], 5.0)
    self.assertAlmostEqual(up["lrs"], lrs_by_hand(5.0))
    self.assertGreater(up["lrs"], 60.0)

  def test_report_per_run_aggregation(self):
    rep = metrics.ranking_report(0.90, [0.40, 0.42], [0.60, 0.64],
                                 [0.55, 0.55], acc_rand_hard=0.30)
    self.assertEqual(rep["n"], 2)
    self.assertAlmostEqual(rep["hlr"], 0.49)
    self.assertAlmostEqual(rep["hlr_std"], 0.01)
    self.assertAlmostEqual(rep["ior"], 0.07)
    runs = [lrs_by_hand(0.5 * 0.05 - 0.5 * 0.50),
            lrs_by_hand(0.5 * 0.09 - 0.5 * 0.48)]
    self.assertAlmostEqual(rep["lrs"], np.mean(runs))
    self.assertAlmostEqual(rep["lrs_std"], np.std(runs))
    self.assertAlmostEqual(rep["lrs_of_mean"],
                           lrs_by_hand(0.5 * 0.07 - 0.5 * 0.49))
    pct = rep["dd_ranking_percent"]
    self.assertAlmostEqual(pct["hlr"], 49.0)
    self.assertAlmostEqual(pct["lrs"], np.mean(
        [lrs_by_hand(2.5 - 25.0), lrs_by_hand(4.5 - 24.0)]))
    # Hard-label mode: IOR = syn_hard - rand_hard.
    self.assertAlmostEqual(rep["hard"]["ior"], 0.11)
    self.assertAlmostEqual(rep["dd_ranking_percent_hard"]["ior"], 11.0)


class StorageTest(absltest.TestCase):

  def test_fkd_imagenet_and_mnist(self):
    n = metrics.label_bytes("fkd", num_images=50_000, num_classes=1000,
                            epochs=300)
    self.assertEqual(n, 5e4 * 300 * 1000 * 2)
    self.assertEqual(metrics.format_bytes(n), "30.0 GB")
    self.assertEqual(metrics.format_bytes(n, binary=True), "27.9 GiB")
    ipc200 = metrics.label_bytes("fkd", num_images=200_000, num_classes=1000,
                                 epochs=300)
    self.assertEqual(metrics.format_bytes(ipc200, binary=True), "111.8 GiB")
    m = metrics.label_bytes("fkd", num_images=100, num_classes=10, epochs=300)
    self.assertEqual(m, 600_000)
    self.assertEqual(metrics.format_bytes(m), "600.0 KB")

  def test_other_kinds(self):
    self.assertEqual(metrics.label_bytes("hard", num_images=100), 200)
    self.assertEqual(
        metrics.label_bytes("soft", num_images=100, num_classes=10), 4000)
    self.assertEqual(
        metrics.label_bytes("fkd_topk", num_images=100, epochs=300, top_k=3),
        100 * 300 * 3 * (2 + 2))
    self.assertEqual(
        metrics.label_bytes("fkd", num_images=100, num_classes=10, epochs=300,
                            meta_bytes_per_epoch=metrics.PRNG_KEY_BYTES),
        600_000 + 300 * 8)
    key = jax.random.key(0)
    self.assertEqual(jax.random.key_data(key).nbytes, metrics.PRNG_KEY_BYTES)
    with self.assertRaises(ValueError):
      metrics.label_bytes("hard", num_images=10, epochs=3)

  def test_image_bytes_and_summary(self):
    x = np.zeros((100, 28, 28, 1), np.float32)
    self.assertEqual(metrics.image_bytes(x), 100 * 784 * 4)
    self.assertEqual(metrics.image_bytes(x, np.uint8), 78_400)
    self.assertEqual(metrics.image_bytes((100, 28, 28, 1), np.uint8), 78_400)
    s = metrics.storage_summary(78_400, 600_000)
    self.assertAlmostEqual(s["label_to_image_ratio"], 600_000 / 78_400)
    self.assertEqual(s["image"], "78.4 KB")
    self.assertEqual(metrics.format_bytes(512), "512 B")


class DiversityTest(absltest.TestCase):

  def test_identical_orthogonal_singleton(self):
    eye = np.eye(4)
    feats = np.concatenate([np.tile([[1.0, 2, 3, 4]], (3, 1)), eye[:3],
                            eye[3:]])
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    d = metrics.class_diversity(feats, labels)
    np.testing.assert_allclose(d["per_class_pairwise"], [0.0, 1.0, 0.0],
                               atol=1e-12)
    np.testing.assert_array_equal(d["counts"], [3, 3, 1])
    self.assertAlmostEqual(d["pairwise"], 1.0 / 3)
    self.assertAlmostEqual(
        metrics.within_class_diversity(feats, labels,
                                       include_singletons=False), 0.5)
    # Centroid of 3 orthonormal vectors: cos = 1/sqrt(3) for each.
    self.assertAlmostEqual(d["per_class_centroid"][1], 1 - 1 / math.sqrt(3))
    self.assertAlmostEqual(d["per_class_centroid"][0], 0.0)

  def test_scale_invariant_and_opposite(self):
    feats = np.array([[1.0, 0.0], [5.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    d = metrics.class_diversity(feats, np.array([0, 0, 1, 1]),
                                num_classes=3)
    self.assertAlmostEqual(d["per_class_pairwise"][0], 0.0)
    self.assertAlmostEqual(d["per_class_pairwise"][1], 1.0)
    self.assertTrue(np.isnan(d["per_class_pairwise"][2]))  # empty class
    opposite = metrics.within_class_diversity(feats[[0, 2]], np.zeros(2, int))
    self.assertAlmostEqual(opposite, 2.0)

  def test_matches_brute_force(self):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(7, 5))
    z = f / np.linalg.norm(f, axis=1, keepdims=True)
    brute = np.mean([1 - z[i] @ z[j] for i in range(7) for j in range(i)])
    self.assertAlmostEqual(
        metrics.within_class_diversity(f, np.zeros(7, int)), brute)


class TransferredDiscrepancyTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(0)
    self.c = 3
    n, d = 120, 6
    self.y = np.arange(n) % self.c
    means = rng.normal(size=(self.c, d)) * 2.0
    self.fa = means[self.y] + rng.normal(size=(n, d))
    self.ya = np.arange(60) % self.c
    self.ea = means[self.ya] + rng.normal(size=(60, d))
    self.rng = rng

  def td(self, fb, eb, **kw):
    return td_lib.transferred_discrepancy(
        self.fa, fb, self.y, num_classes=self.c, eval_feats_a=self.ea,
        eval_feats_b=eb, **kw)

  def test_identical_is_zero(self):
    self.assertEqual(self.td(self.fa, self.ea), 0.0)
    self.assertEqual(self.td(self.fa, self.ea, discrepancy="sq_l2"), 0.0)
    self.assertEqual(self.td(self.fa, self.ea, head="softmax"), 0.0)

  def test_orthogonal_and_invertible_transforms(self):
    q, _ = np.linalg.qr(self.rng.normal(size=(6, 6)))
    fb, eb = 3.0 * self.fa @ q + 1.0, 3.0 * self.ea @ q + 1.0
    self.assertEqual(self.td(fb, eb), 0.0)
    self.assertLess(self.td(fb, eb, discrepancy="sq_l2"), 1e-18)
    self.assertEqual(self.td(fb, eb, head="softmax", steps=100), 0.0)
    a = self.rng.normal(size=(6, 6)) + 3 * np.eye(6)  # invertible
    fb, eb = self.fa @ a, self.ea @ a
    self.assertLess(self.td(fb, eb, ridge=0.0, discrepancy="sq_l2"), 1e-18)
    self.assertEqual(self.td(fb, eb, ridge=1e-8), 0.0)

  def test_unrelated_features(self):
    fb = self.rng.normal(size=self.fa.shape)
    eb = self.rng.normal(size=self.ea.shape)
    td = self.td(fb, eb)
    self.assertGreater(td, 0.3)
    self.assertLessEqual(td, 1.0)
    self.assertGreater(self.td(fb, eb, discrepancy="sq_l2"), 0.1)
    self.assertGreater(self.td(fb, eb, head="softmax", steps=100), 0.3)

  def test_in_sample_default_and_dual_form(self):
    wide = self.rng.normal(size=(120, 200))  # d > n: dual ridge
    td = td_lib.transferred_discrepancy(self.fa, wide, self.y,
                                         num_classes=self.c)
    self.assertGreaterEqual(td, 0.0)
    primal = td_lib.linear_head_outputs(wide[:, :100], self.y,
                                         num_classes=self.c)
    self.assertEqual(primal.shape, (120, self.c))
    with self.assertRaises(ValueError):
      td_lib.transferred_discrepancy(self.fa, self.fa, self.y,
                                      num_classes=self.c,
                                      eval_feats_a=self.ea)


class MeanStdTest(absltest.TestCase):

  def test_percent(self):
    r = metrics.mean_std([0.5, 0.6, 0.7])
    self.assertAlmostEqual(r["mean"], 60.0)
    self.assertAlmostEqual(r["std"], np.std([50.0, 60.0, 70.0]))
    self.assertEqual(r["n"], 3)
    self.assertAlmostEqual(metrics.mean_std([0.5, 0.7], ddof=1)["std"],
                           np.std([50.0, 70.0], ddof=1))


if __name__ == "__main__":
  absltest.main()
