"""The decoupled entry point runs every method end to end on fake data
(subprocesses, seconds each) and writes a fair-evaluation report."""

import json
import subprocess
import sys

import numpy as np
import pytest

import distill_jax
from tests.experiments_test import _run
from tests.experiments_test import ROOT
from tests.experiments_test import assert_one_line_error
from tests.experiments_test import fake_data  # pylint: disable=unused-import


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One teacher cache for the module: the teacher and the random-real
  students are trained once and reused, as across real runs."""
  return tmp_path_factory.mktemp("teachers")


# CDA and random_real share SRe2L's and the baseline's code paths (their
# schedules and selection are unit-tested); the CLI runs these three.
@pytest.mark.parametrize("method", ["sre2l", "delt", "rded"])
def test_decoupled_smoke(method, fake_data, cache, tmp_path):
  proc = _run("decoupled", ["--preset=smoke", f"--method={method}",
                            f"--teacher_cache={cache}"], fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  wd = tmp_path / "wd"
  report = json.loads((wd / "report.json").read_text())
  ev = report["evaluation"]
  # Learnable fake data (class-dependent brightness): the teacher and
  # students on real images are well above chance (10%); 8 recover
  # iterations from noise are not expected to be.
  assert report["teacher_test_acc"] > 0.5
  assert ev["random_real_soft"]["test_acc"]["mean"] > 30.0
  if method in ("rded", "random_real"):
    assert ev["soft"]["test_acc"]["mean"] > 30.0, ev["soft"]
  assert ev["soft"]["test_acc"]["n"] == 2
  for key in ("hard", "random_real_soft", "random_real_hard"):
    assert 0.0 <= ev[key]["test_acc"]["mean"] <= 100.0
  assert {"hlr", "ior", "lrs", "dd_ranking_percent"} <= set(ev["ranking"])
  assert 0.0 <= ev["ranking"]["lrs"] <= 1.0
  assert ev["bytes"]["images"] == 20 * 28 * 28 * 4
  assert 0.0 <= ev["diversity"] <= 2.0
  assert 0.0 <= ev["td"] <= 1.0
  d = distill_jax.load_distilled_set(str(wd / "distilled.npz"))
  assert d.method == method and d.images.shape == (20, 28, 28, 1)
  assert np.isfinite(d.images).all()
  np.testing.assert_array_equal(d.labels, np.repeat(np.arange(10), 2))
  if method in ("sre2l", "cda", "delt"):
    rows = [json.loads(l) for l in (wd / "recover" /
                                    "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and np.isfinite(rows[-1]["loss"])
  # The teacher is trained once and reused.
  assert len(list(cache.glob("teacher_*.npz"))) >= 1
  if method == "rded":  # the comparison table and plot of runs.
    out = tmp_path / "table"
    subprocess.run([sys.executable, "-m", "experiments.decoupled_table",
                    f"--runs={wd},{wd}", f"--out={out}"], cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    rows = (out / "table.md").read_text().splitlines()
    assert len(rows) == 5 and rows[2].startswith("| rded |")
    assert (out / "comparison.png").stat().st_size > 1000


def test_decoupled_bad_flag(fake_data, tmp_path):
  proc = _run("decoupled", ["--preset=smoke", "--method=magic"], fake_data,
              tmp_path, check=False)
  assert_one_line_error(proc, "--method=magic")


def test_fair_eval_of_a_dd_set(fake_data, cache, tmp_path):
  # A bilevel set under the same fair evaluation as the decoupled ones.
  _run("dd_mnist_random", ["--preset=smoke"], fake_data, tmp_path / "dd")
  dd_set = tmp_path / "dd" / "wd" / "distilled.npz"
  proc = _run("fair_eval", ["--preset=smoke", f"--distilled={dd_set}",
                            f"--teacher_cache={cache}"],
              fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert report["method"] == "dd"
  ev = report["evaluation"]
  assert ev["random_real_soft"]["test_acc"]["mean"] > 30.0
  assert {"soft", "hard", "ranking", "bytes", "td"} <= set(ev)


def test_fair_eval_needs_a_set(fake_data, tmp_path):
  proc = _run("fair_eval", ["--preset=smoke"], fake_data, tmp_path,
              check=False)
  assert_one_line_error(proc, "--distilled")


def test_gpu_preset_at_tiny_size(fake_data, tmp_path):
  # The papers' settings (ResNet-18 teacher, Mixup, T = 30, vmapped
  # students), shrunk by flags to seconds on the fake CIFAR-10 subset.
  proc = _run("decoupled", [
      "--preset=gpu_cifar10_ipc10", "--method=delt", "--dataset=cifar10_subset",
      "--train_limit=200", "--val_size=100", "--teacher_epochs=1",
      "--teacher_batch_size=64", "--teacher_width=8",
      "--recover_iterations=8",
      "--recover_rounds=2", "--ipc=2", "--post_epochs=1",
      "--post_eval_every=1", "--post_students=2", "--post_width=8",
      "--noeval_random", "--noeval_metrics",
      f"--teacher_cache={tmp_path / 'teachers'}"], fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert report["teacher_recipe"]["arch"] == "resnet18"
  assert report["evaluation"]["protocol"]["mix"] == "mixup"
  assert report["evaluation"]["soft"]["test_acc"]["n"] == 2


@pytest.mark.parametrize("ipc,batch,sizes", [
    (1, 10, (1, 0, 0, 0, 0, 0, 0, 0)),
    (10, 50, (2, 2, 1, 1, 1, 1, 1, 1)),
    (50, 100, (7, 7, 6, 6, 6, 6, 6, 6))])
def test_cpu_presets_by_ipc(ipc, batch, sizes):
  """The CPU presets at IPC 1, 10 and 50: DELT's post-train batch table
  (C.5) and round partition, for both datasets."""
  from experiments import presets  # pylint: disable=g-import-not-at-top
  from distill_jax.methods.decoupled import posttrain
  from distill_jax.methods.decoupled import schedules
  for dataset in ("fashion", "cifar10"):
    cfg = presets.DECOUPLED(f"{dataset}_ipc{ipc}")
    assert cfg.ipc == ipc
    assert cfg.post_cfg().batch_size in (0, batch)
    assert posttrain.batch_size_for(ipc, 10) == batch
    rec = cfg.replace_flat(method="delt").recover_cfg()
    assert schedules.round_sizes(rec.ipc, rec.rounds) == sizes
    assert rec.iterations == (800 if ipc == 50 else 1000)
    post = cfg.post_cfg()
    steps = -(-ipc * 10 // batch) * post.epochs  # Both fit in 30 minutes.
    assert steps == {1: 300, 10: 600, 50: 600}[ipc], steps
