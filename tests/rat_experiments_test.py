"""RaT-BPTT / Boost-DD entry points run end to end on fake data (seconds of
compute each; the checks are on the values written) and reject bad flags
with one line `error: ...`."""

import importlib
import json

import chex
import numpy as np
import pytest

from tests import test_utils
from tests.experiments_test import _run
from tests.experiments_test import assert_one_line_error
from tests.experiments_test import load_set


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("datasets")
  return test_utils.write_fake_datasets(str(root))


@pytest.mark.parametrize("module", ["rat_bptt_fashion", "rat_bptt_mnist",
                                    "rat_bptt_cifar"])
def test_rat_smoke(module, fake_data, tmp_path):
  proc = _run(module, ["--preset=smoke"], fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  cfg = importlib.import_module(f"experiments.{module}").PRESETS("smoke")
  wd = tmp_path / "wd"
  report = json.loads((wd / "report.json").read_text())
  assert 0.0 <= report["test_acc"]["mean"] <= 100.0
  assert report["test_acc"]["n"] == cfg.eval_nets
  assert report["selected_budget"] in cfg.eval_budgets
  assert (wd / "images" / "step_00.png").stat().st_size > 100
  metrics = [json.loads(line) for line in
             (wd / "metrics.jsonl").read_text().splitlines()]
  losses = [m["loss"] for m in metrics if "loss" in m]
  assert len(losses) == cfg.outer_steps and np.all(np.isfinite(losses))
  # Two outer steps are too few to learn: check the set itself.
  d = load_set(wd / "distilled.npz")
  shape = (32, 32, 3) if module == "rat_bptt_cifar" else (28, 28, 1)
  view = d.per_class()
  chex.assert_shape(view.x, (10, cfg.ipc, *shape))
  chex.assert_shape(view.targets, (10, cfg.ipc, 10))
  assert d.dataset == cfg.dataset and d.method == "rat_bptt"
  if cfg.learn_labels:  # CIFAR: learned soft labels, clipped at 0, and ZCA.
    assert view.soft and view.targets.min() >= 0.0
    assert d.zca is not None
  else:
    np.testing.assert_array_equal(view.targets.argmax(-1),
                                  np.arange(10)[:, None].repeat(cfg.ipc, 1))


def test_boost_smoke(fake_data, tmp_path):
  proc = _run("boost_dd", ["--preset=smoke"], fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert [b["ipc"] for b in report["budgets"]] == [1, 2]
  for b in report["budgets"]:
    assert 0.0 <= b["test_acc"]["mean"] <= 100.0
  d = load_set(tmp_path / "wd" / "distilled.npz")
  view = d.per_class()
  chex.assert_shape(view.x, (10, 2, 28, 28, 1))  # 2 blocks of 1 per class.
  np.testing.assert_array_equal(view.block, np.tile([0, 1], (10, 1)))
  assert d.method == "boost_dd"


def test_boost_slow_smoke_and_bad_mode(fake_data, tmp_path):
  _run("boost_dd", ["--preset=smoke", "--boost_mode=slow"], fake_data,
       tmp_path)
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert report["boost_mode"] == "slow"
  assert [b["ipc"] for b in report["budgets"]] == [1, 2]
  proc = _run("boost_dd", ["--preset=smoke", "--boost_mode=fast"], fake_data,
              tmp_path / "bad", check=False)
  assert_one_line_error(proc, "--boost_mode=fast: value should be one of "
                        "<frozen|slow>")


def test_intercorrelation_smoke(fake_data, tmp_path):
  _run("intercorrelation", ["--preset=smoke", "--budgets=1,2",
                            "--subset_draws=1"], fake_data, tmp_path)
  wd = tmp_path / "wd"
  table = json.loads((wd / "intercorrelation.json").read_text())
  assert [r["ipc"] for r in table["rows"]] == [1, 2]
  for r in table["rows"]:  # both Boost-DD readings by default.
    assert r["boost_dd"] and r["boost_dd_slow"], r
  assert (wd / "boost" / "report.json").exists()
  assert (wd / "boost_slow" / "report.json").exists()
  assert "Boost-DD (slow)" in (wd / "intercorrelation.md").read_text()
  assert (wd / "intercorrelation.md").exists()


def test_rat_compare_smoke(fake_data, tmp_path):
  _run("rat_compare", ["--preset=smoke", "--real_draws=2"], fake_data,
       tmp_path)
  wd = tmp_path / "wd"
  table = json.loads((wd / "rat_compare.json").read_text())
  rows = {r["method"]: r for r in table["rows"]}
  assert list(rows) == ["rat_random", "rat_end", "full", "random_real",
                        "kmeans"]
  assert (rows["full"]["total_steps"], rows["full"]["window"]) == (2, 2)
  assert rows["rat_end"]["truncation"] == "end"
  assert rows["random_real"]["test_acc"]["n"] == 2 * table["eval_nets"]
  for r in rows.values():
    assert 0.0 <= r["test_acc"]["mean"] <= 100.0
  assert "| full-unroll BPTT | 2 / 2 |" in (wd / "rat_compare.md").read_text()
  # A finished run of another config is refused as the RaT-BPTT row.
  proc = _run("rat_compare", ["--preset=smoke", "--window=1",
                              f"--random_dir={wd / 'rat_random'}",
                              "--methods=rat_random"],
              fake_data, tmp_path / "again", check=False)
  assert proc.returncode != 0
  assert "holds a run with another config (fields ['window']" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--truncation=cyclic"],
     "--truncation=cyclic: value should be one of <random|end|full>"),
    (["--window=50"], "window=50 must be in"),
    (["--inner_opt=rmsprop"], "--inner_opt=rmsprop: value should be one of"),
    (["--learn_lr"], "needs inner_opt='gd'"),
    (["--syn_aug=flip_blur"], "--syn_aug=flip_blur: must be 'none' or"),
])
def test_bad_flags(args, message, fake_data, tmp_path):
  proc = _run("rat_bptt_fashion", ["--preset=smoke", *args], fake_data,
              tmp_path, check=False)
  assert_one_line_error(proc, message)


def test_bad_real_batch(fake_data, tmp_path):
  proc = _run("rat_bptt_fashion", ["--preset=smoke", "--real_batch=100000"],
              fake_data, tmp_path, check=False)
  assert proc.returncode == 2 and "exceeds" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_rat_compare_reuse_distinguishes_time_budgets(tmp_path):
  """A run under a time budget is reused for another budget only when the
  budget changes nothing: all outer steps done, in less time."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from experiments import rat_compare  # pylint: disable=g-import-not-at-top
  cfg = rat_compare.preset("smoke")  # no time budget.
  (tmp_path / "config.json").write_text(cfg.to_json())

  def report(outer_steps, train_time_s):
    rep = {"outer_steps": outer_steps, "train_time_s": train_time_s}
    (tmp_path / "report.json").write_text(json.dumps(rep))
    return rep

  rep = report(cfg.outer_steps, 5.0)
  assert rat_compare.reuse_report(str(tmp_path), cfg) == rep
  # Run-control fields do not matter ...
  same = dataclasses.replace(cfg, eval_batch=cfg.eval_batch + 1)
  assert rat_compare.reuse_report(str(tmp_path), same) == rep
  # ... nor a budget the finished run would not have reached ...
  assert rat_compare.reuse_report(
      str(tmp_path), dataclasses.replace(cfg, time_budget_s=60.0)) == rep
  # ... but one that would have stopped it earlier does.
  with pytest.raises(ValueError, match=r"fields \['time_budget_s'\]"):
    rat_compare.reuse_report(str(tmp_path),
                             dataclasses.replace(cfg, time_budget_s=2.0))
  # A run its budget stopped early stands only for that budget.
  (tmp_path / "config.json").write_text(
      dataclasses.replace(cfg, time_budget_s=3.0).to_json())
  report(cfg.outer_steps - 1, 3.1)
  with pytest.raises(ValueError, match=r"fields \['time_budget_s'\]"):
    rat_compare.reuse_report(str(tmp_path), cfg)
  assert rat_compare.reuse_report(
      str(tmp_path), dataclasses.replace(cfg, time_budget_s=3.0))


def test_rat_bptt_learns_above_chance(tmp_path):
  """A short real RaT-BPTT distillation beats chance by a wide margin.

  On bar-pattern data (`write_fake_datasets(bars=True)`) 20 outer steps of
  the smoke setting (MLP, N=4, M=2, 1 image per class) reach about 50 % on
  fresh networks; the set after 1 outer step gives about 17 % (10 classes).
  """
  data_dir = test_utils.write_fake_datasets(str(tmp_path / "bars"),
                                            bars=True)
  _run("rat_bptt_fashion", ["--preset=smoke", "--outer_steps=20",
                            "--outer_lr=0.05", "--seed=0"], data_dir,
       tmp_path)
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert report["test_acc"]["mean"] >= 35.0, report["test_acc"]
