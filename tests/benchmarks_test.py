"""The benchmark drivers: configuration selection and error messages."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", script), *args],
      capture_output=True, text=True, check=False, cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


class BenchmarkDriverTest(absltest.TestCase):

  def test_unknown_configuration_is_named(self):
    for script in ("meta_step.py", "rat_bptt_step.py"):
      proc = _run(script, "--only=nope", "--out=/dev/null")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("unknown configurations ['nope']", proc.stderr)
      self.assertIn("choose from", proc.stderr)

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
    import rat_bptt_step  # pylint: disable=g-import-not-at-top
    base = {**rat_bptt_step.FASHION, "width": 8, "real_batch": 16,
            "runs": 1, "truncation": "full"}
    flops = []
    for n in (2, 4):
      r = rat_bptt_step.measure({**base, "name": f"w{n}", "total_steps": n,
                                 "window": n})
      self.assertGreater(r["median_s"], 0)
      flops.append(r["gflop_per_step"])
    # Two more window steps cost more than zero and less than the first two
    # plus the real-batch part: the count scales with the window.
    self.assertGreater(flops[1], flops[0])
    self.assertLess(flops[1], 2 * flops[0])


if __name__ == "__main__":
  absltest.main()
