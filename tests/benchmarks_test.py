"""The benchmark drivers: configuration selection and error messages."""

import json
import os
import random
import subprocess
import sys
import tempfile

from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
      capture_output=True, text=True, check=False, cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"})


class BenchmarkDriverTest(absltest.TestCase):

  def test_unknown_configuration_is_named(self):
    for script in ("meta_step.py", "rat_bptt_step.py", "torch_step.py",
                   "recover_step.py", "torch_recover_step.py"):
      with self.subTest(script):
        proc = _run(script, "--only=nope", "--out=/dev/null")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("unknown configurations ['nope']", proc.stderr)
        self.assertIn("choose from", proc.stderr)

  def test_torch_scripts_without_torch_name_the_fix(self):
    for script, only, fix in (
        ("torch_step.py", "ref_fashion", "pip install torch higher"),
        ("torch_recover_step.py", "fashion_sre2l_ipc10", "pip install torch")):
      with self.subTest(script), tempfile.TemporaryDirectory() as d:
        os.makedirs(os.path.join(d, "torch"))
        with open(os.path.join(d, "torch", "__init__.py"), "w") as f:
          f.write("raise ImportError('No module named torch')\n")
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", script),
             f"--only={only}", "--out=/dev/null"],
            capture_output=True, text=True, check=False, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": d})
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn(fix, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

  def test_torch_step_settings_match_the_jax_benchmark(self):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import rat_bptt_step  # pylint: disable=g-import-not-at-top
    import torch_step  # pylint: disable=g-import-not-at-top
    jax_cfgs = {c["name"]: c for c in rat_bptt_step.configs(1, quick=False)}
    keys = ("ipc", "batch_per_class", "total_steps", "window", "inner_opt",
            "inner_lr", "real_batch")
    for name, cfg in torch_step.CONFIGS.items():
      with self.subTest(name):
        j = jax_cfgs[name]
        self.assertEqual({k: cfg[k] for k in keys}, {k: j[k] for k in keys})
        c, h, w = cfg["shape"]
        self.assertEqual((h, w, c), tuple(j["shape"]))
        self.assertEqual((j["width"], j["depth"], j["norm"], j["pooling"]),
                         (128, 3, "instance", "avg"))

  def test_meta_step_single_configuration_writes_json(self):
    with tempfile.TemporaryDirectory() as d:
      out = os.path.join(d, "m.json")
      proc = _run("meta_step.py", "--only=inits_1", "--runs=1", "--quick",
                  f"--out={out}")
      self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
      with open(out) as f:
        res = json.load(f)
    self.assertEqual([r["name"] for r in res["results"]], ["inits_1"])
    r = res["results"][0]
    self.assertNotIn("error", r)
    self.assertGreater(r["median_s"], 0)
    self.assertGreater(r["gflop_per_step"], 0)
    machine = res["machine"]
    self.assertGreater(machine["matmul_gflops"], 0)
    self.assertEqual(machine["cores"], os.cpu_count())
    self.assertAlmostEqual(r["fraction_of_peak"],
                           r["gflops_per_s"] / machine["matmul_gflops"],
                           places=2)

  def test_interleaved_ratio(self):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import meta_step  # pylint: disable=g-import-not-at-top
    r = meta_step.measure({"name": "r", "steps": 2, "epochs": 1,
                           "num_inits": 1, "remat": "full", "real_batch": 64,
                           "runs": 3, "compare_inits": (1, 2)})
    self.assertGreater(r["median_s_1"], 0)
    self.assertGreater(r["median_s_2"], 0)
    self.assertBetween(r["ratio_median"], r["ratio_min"], r["ratio_max"])
    self.assertIn("ratio_16_over_1",
                  [c["name"] for c in meta_step.configs(1, quick=False)])

  def test_rat_flops_count_every_window_step(self):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import rat_bptt_step  # pylint: disable=g-import-not-at-top
    from distill_jax.nn import models  # pylint: disable=g-import-not-at-top
    from distill_jax.methods import rat_bptt  # pylint: disable=g-import-not-at-top
    base = {**rat_bptt_step.FASHION, "width": 8, "real_batch": 16,
            "truncation": "full"}
    # The whole benchmark path once (one step compiled and timed).
    r = rat_bptt_step.measure({**base, "name": "w2", "runs": 1,
                               "total_steps": 2, "window": 2})
    self.assertGreater(r["median_s"], 0)
    self.assertGreater(r["gflop_per_step"], 0)
    # The count itself at windows 2 and 4 (no step compiled): two more
    # window steps cost more than zero and less than the first two plus the
    # real-batch part, so the count scales with the window.
    spec = {k: v for k, v in base.items() if k != "shape"}
    shape = tuple(base["shape"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 32).astype(np.int32)
    flops = []
    for n in (2, 4):
      cfg = rat_bptt.RatConfig(**spec, total_steps=n, window=n).validate()
      model = models.build(cfg, shape, 10)
      learned = rat_bptt.init_learned(jax.random.key(0), cfg, 10, shape)
      flops.append(rat_bptt_step.count_flops(
          cfg, model, learned, rat_bptt.empty_fixed(10, shape), x, y, 0.0))
    self.assertAlmostEqual(flops[0] / 1e9, r["gflop_per_step"], places=2)
    self.assertGreater(flops[1], flops[0])
    self.assertLess(flops[1], 2 * flops[0])

  def test_torch_recover_settings_match_the_jax_benchmark(self):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import recover_step  # pylint: disable=g-import-not-at-top
    import torch_recover_step  # pylint: disable=g-import-not-at-top
    with open(torch_recover_step.__file__) as f:
      source = f.read()
    self.assertNotIn("import distill_jax", source)
    self.assertNotIn("from distill_jax", source)
    jax_cfgs = {c["name"]: c for c in recover_step.configs(1, quick=False)}
    keys = ("ipc", "iterations", "lr", "r_bn", "first_bn_multiplier",
            "crop", "min_scale", "flip", "jitter")
    for name, cfg in torch_recover_step.CONFIGS.items():
      with self.subTest(name):
        j = jax_cfgs[name]
        r = j["recover"]
        self.assertEqual({k: cfg[k] for k in keys}, {k: r[k] for k in keys})
        self.assertEqual((r["method"], r["per_image_aug"]), ("sre2l", False))
        self.assertIn(r["batching"], ("", "cross_class"))  # "": cross_class
        self.assertEqual(cfg["batch_size"], recover_step.CLASSES)
        c, h, w = cfg["shape"]
        self.assertEqual((h, w, c), tuple(j["shape"]))
        self.assertEqual(list(cfg["mean"]), j["mean"])
        self.assertEqual(list(cfg["std"]), j["std"])
        self.assertEqual(j["teacher"], {"arch": "convnet_bn",
                                        "width": cfg["width"],
                                        "depth": cfg["depth"]})
    # DELT runs a multiple of its rounds; --quick is a subset.
    for name, j in jax_cfgs.items():
      if j["kind"] == "recover" and j["recover"]["method"] == "delt":
        self.assertEqual(j["recover"]["iterations"] %
                         j["recover"]["rounds"], 0)
    self.assertLessEqual({c["name"] for c in recover_step.configs(1, True)},
                         set(jax_cfgs))
    # The re-created RandomResizedCrop box stays inside the image.
    rng = random.Random(0)
    for _ in range(200):
      top, left, hh, ww = torch_recover_step.rrc_params(
          28, 28, (0.25, 1.0), (3 / 4, 4 / 3), rng.random, rng.randint)
      self.assertTrue(0 <= top <= 28 - hh and 0 <= left <= 28 - ww)
      self.assertGreater(hh * ww, 0)

  def test_recover_step_tiny(self):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import recover_step  # pylint: disable=g-import-not-at-top
    spec = recover_step.recover_spec(
        "fashion_delt_ipc10", "fashion_ipc10", 1, method="delt",
        recover_batching="class_grouped", ipc=4, recover_iterations=8,
        recover_rounds=2, teacher_width=8)
    r = recover_step.measure(spec)
    self.assertEqual([x["images"] for x in r["rounds"]], [20, 40])
    self.assertGreater(r["median_s"], 0)
    self.assertGreater(r["gflop_per_iter"], r["rounds"][0]["gflop_per_iter"])
    self.assertGreater(r["xla_temp_mib"], 0)
    self.assertGreater(r["peak_rss_mib"], 0)
    # Slots (2, 2) of 4 join at rounds (0, 1): 2 x 8 + 2 x 4 of 4 x 8.
    self.assertEqual(r["image_iterations"], 10 * (2 * 8 + 2 * 4))
    self.assertAlmostEqual(r["image_iteration_saving"], 0.25)
    spec = recover_step.post_spec("post_fashion_ipc10", "fashion_ipc10", 1,
                                  steps=2)
    spec.update(ipc=2, teacher={**spec["teacher"], "width": 8},
                post={**spec["post"], "width": 8})
    p = recover_step.measure(spec)
    self.assertEqual(p["batch_size"], 20)
    self.assertGreater(p["images_per_s"], 0)
    summary = recover_step.summarize({r["name"]: r, p["name"]: p})
    self.assertEqual(summary["ipc10_delt_image_iteration_saving"], 0.25)
    self.assertIn("post_fashion_ipc10_images_per_s", summary)

  def test_torch_recover_step_tiny(self):
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      self.skipTest("torch is not installed (not a dependency)")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import torch_recover_step  # pylint: disable=g-import-not-at-top
    r = torch_recover_step.measure("fashion_sre2l_ipc10", runs=1, seed=0,
                                   threads=1, warmup=1)
    self.assertGreater(r["batch_median_s"], 0)
    self.assertAlmostEqual(r["median_s"], 10 * r["batch_median_s"], places=3)
    self.assertEqual(r["threads"], 1)
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "j.json")
      with open(path, "w") as f:
        json.dump({"results": [{"name": r["name"], "median_s": 0.5,
                                "peak_rss_mib": 1.0}]}, f)
      c = torch_recover_step.compare(r, path)
    self.assertAlmostEqual(c["torch_over_jax"], r["median_s"] / 0.5,
                           places=1)

if __name__ == "__main__":
  absltest.main()
