"""Smoke runs of the paper's experiments (Table 1, adaptation, poisoning,
sensitivity, cross-architecture, linear regression) as subprocesses on tiny
fake local data, plus their flag errors."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from distill_jax import distilled_set
from distill_jax.methods import dd_data as distilled
from distill_jax.nn import models
from distill_jax.run import storage
from experiments import presets
from tests import experiments_test
from tests import test_utils

_run = experiments_test._run  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("datasets")
  return test_utils.write_fake_datasets(str(root))


def _fake_dd_run(workdir, init_mode, image_init="noise"):
  """A distilled.npz + report.json as dd_mnist_* --preset=smoke writes."""
  cfg = dataclasses.replace(presets.DD_MNIST_RANDOM("smoke"),
                            init_mode=init_mode, image_init=image_init)
  key = jax.random.key(0)
  learned, labels = distilled.init(key, steps=cfg.steps, epochs=cfg.epochs,
                                   num_classes=10, per_class=1,
                                   image_shape=(28, 28, 1), lr_init=0.02)
  model = models.build(cfg, (28, 28, 1), 10)
  init = model.init(key) if init_mode == "fixed" else None
  os.makedirs(workdir, exist_ok=True)
  storage.save_distilled_set(
      os.path.join(workdir, "distilled.npz"),
      distilled_set.DistilledSet.from_dd(
          np.asarray(learned["x"]), np.asarray(labels),
          np.asarray(learned["raw_lr"]), epochs=cfg.epochs, mean=(0.1307,),
          std=(0.3081,), class_names=tuple(str(i) for i in range(10)),
          dataset="mnist", model=distilled_set.model_spec(cfg),
          metadata={"init_mode": init_mode,
                    "config": dataclasses.asdict(cfg)},
          init_params=None if init is None else jax.tree.map(np.asarray,
                                                             init)))
  storage.write_json(os.path.join(workdir, "report.json"),
                     {"test_acc": {"mean": 10.0, "std": 0.0, "n": 1}})
  return str(workdir)


def test_table1_smoke(fake_data, tmp_path):
  fixed = _fake_dd_run(tmp_path / "fixed", "fixed")
  rand = _fake_dd_run(tmp_path / "random", "random")
  proc = _run("table1", ["--preset=smoke", f"--fixed_dir={fixed}",
                         f"--random_dir={rand}"], fake_data, tmp_path)
  assert "k-NN on k-means" in proc.stdout
  out = json.loads((tmp_path / "wd" / "table1.json").read_text())
  assert set(out["rows"]) == {
      "dd_fixed", "dd_random", "random_real", "optimized_real", "kmeans",
      "average_real", "knn_random_real", "knn_kmeans"}
  assert out["rows"]["random_real"]["test_acc"]["n"] == 2
  assert out["rows"]["random_real"]["best"]["lr"] in ("learned", 0.01)
  for row in out["rows"].values():
    assert 0.0 <= row["test_acc"]["mean"] <= 100.0
  # The fake classes differ in brightness: nearest neighbours find them.
  assert out["rows"]["knn_random_real"]["test_acc"]["mean"] > 90.0
  assert out["rows"]["knn_kmeans"]["test_acc"]["mean"] > 90.0
  assert abs(out["diff_vs_paper"]["kmeans"] -
             (out["rows"]["kmeans"]["test_acc"]["mean"] - 76.4)) < 1e-6
  assert (tmp_path / "wd" / "table1.md").exists()
  # Another fixed-init run: the baselines come from the workdir's cache and
  # the table is the same apart from the DD rows.
  # An extra random-init run (another image init) adds its own row.
  fixed2 = _fake_dd_run(tmp_path / "fixed2", "fixed")
  extra = _fake_dd_run(tmp_path / "real", "random", image_init="real")
  proc = _run("table1", ["--preset=smoke", f"--fixed_dir={fixed2}",
                         f"--random_dir={rand}",
                         f"--extra_random_dirs={extra}"], fake_data, tmp_path)
  assert "baselines: reusing" in proc.stdout
  assert "images initialised from real" in proc.stdout
  out2 = json.loads((tmp_path / "wd" / "table1.json").read_text())
  assert out2["rows"]["kmeans"] == out["rows"]["kmeans"]
  assert out2["rows"]["dd_random_real_init"]["test_acc"]["n"] == 2
  # --val_limit: selection on the first images of the validation split (a
  # new cache key, so the baselines are re-run).
  proc = _run("table1", ["--preset=smoke", f"--fixed_dir={fixed}",
                         f"--random_dir={rand}", "--val_limit=7"], fake_data,
              tmp_path)
  assert "baselines: reusing" not in proc.stdout
  assert "chosen on 7 validation images" in proc.stdout


def test_table1_bad_flags(fake_data, tmp_path):
  proc = _run("table1", ["--preset=smoke"], fake_data, tmp_path, check=False)
  assert proc.returncode != 0 and "--fixed_dir is required" in proc.stderr
  proc = _run("table1", ["--preset=smoke", "--fixed_dir=/nonexistent",
                         "--random_dir=/nonexistent"], fake_data, tmp_path,
              check=False)
  assert proc.returncode != 0 and "no such file" in proc.stderr
  assert "Traceback" not in proc.stderr
  proc = _run("table1", ["--preset=smoke", "--fixed_dir=/a", "--random_dir=/b",
                         "--val_limit=-1"], fake_data, tmp_path, check=False)
  assert proc.returncode != 0 and "val_limit=-1 must be >= 0" in proc.stderr


def test_cross_arch_smoke(fake_data, tmp_path):
  rand = _fake_dd_run(tmp_path / "random", "random")
  _run("cross_arch", ["--preset=smoke", f"--distilled={rand}/distilled.npz",
                      "--archs=lenet,mlp"], fake_data, tmp_path)
  out = json.loads((tmp_path / "wd" / "cross_arch.json").read_text())
  assert set(out["rows"]) == {"lenet", "mlp"}
  assert out["rows"]["lenet"]["replay_drop"] == 0.0
  assert "retrain_drop" in out["rows"]["mlp"]


def test_sensitivity_smoke(fake_data, tmp_path):
  _run("sensitivity", ["--preset=smoke"], fake_data, tmp_path)
  wd = tmp_path / "wd"
  out = json.loads((wd / "sensitivity.json").read_text())
  assert set(out["figures"]["fig5"]) == {"one step", "multiple steps"}
  assert len(list((wd / "points").iterdir())) == 3  # duplicates run once
  for png in ("fig4a_steps.png", "fig4b_epochs.png", "fig5_one_vs_many.png"):
    assert (wd / png).exists()


def test_poisoning_smoke(fake_data, tmp_path):
  proc = _run("poisoning", ["--preset=smoke", "--poison_source=3",
                            "--poison_target=8"], fake_data, tmp_path)
  assert "class 3 classified as 8" in proc.stdout
  out = json.loads((tmp_path / "wd" / "poisoning.json").read_text())
  assert out["gd_steps"] == 1 and out["heldout_models"] == 2
  for when in ("before", "after"):
    assert out[when]["source_as_target"]["n"] == 2


def test_adaptation_smoke(fake_data, tmp_path):
  _run("adaptation", ["--preset=smoke"], fake_data, tmp_path)
  out = json.loads((tmp_path / "wd" / "table2.json").read_text())
  assert {"dd_random_pretrained", "dd_fixed_pretrained", "random_real",
          "no_adaptation", "full_target"} <= set(out["rows"])
  assert out["direction"] == "usps->mnist"


def test_linear_regression_smoke(tmp_path):
  proc = _run("linear_regression", ["--preset=smoke"], "", tmp_path)
  out = json.loads((tmp_path / "wd" / "linear_regression.json").read_text())
  assert out["claim_holds"], proc.stdout
  assert (tmp_path / "wd" / "linear_regression.png").stat().st_size > 1000


@pytest.mark.parametrize("module,args,message", [
    ("poisoning", ["--poison_source=2", "--poison_target=2"], "must differ"),
    ("poisoning", ["--poison_target=12"], "not a class"),
    ("adaptation", ["--source=svhn_cropped"], "--image_size=32 --channels=3"),
    ("adaptation", ["--pool_size=2", "--pool_heldout=2"], "val_inits"),
    ("sensitivity", ["--steps_list=0"], "positive integers"),
    ("cross_arch", [], "--distilled is required"),
    ("cross_arch", ["--distilled=x.npz", "--archs=vgg"], "choose from"),
    ("linear_regression", ["--num_data=2"], "num_data"),
])
def test_bad_flags(module, args, message, fake_data, tmp_path):
  proc = _run(module, ["--preset=smoke", *args], fake_data, tmp_path,
              check=False)
  assert proc.returncode != 0
  assert message in proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr


def test_adaptation_svhn_to_mnist_on_mock_data(fake_data, tmp_path,
                                               monkeypatch):
  """SVHN (TFDS, mocked: nothing downloads) -> MNIST resized to 32x32x3."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from experiments import adaptation  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(adaptation.preset("smoke"), source="svhn_cropped",
                            target="mnist", image_size=32, channels=3)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  with tfds.testing.mock_data(num_examples=240):
    out = adaptation.run(cfg, str(tmp_path / "wd"), data_dir=fake_data,
                         show_progress=False)
  assert {"dd_random_pretrained", "no_adaptation"} <= set(out["rows"])
  table = json.loads((tmp_path / "wd" / "table2.json").read_text())
  assert table["direction"] == "svhn_cropped->mnist"
