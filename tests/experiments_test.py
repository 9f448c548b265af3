"""Every experiment's entry point runs end to end (seconds) and rejects bad
flags with one line `error: ...`. Runs as subprocesses on tiny fake local
data; the checks are on the values written (reports, metrics, the set)."""

import importlib
import json
import os
import subprocess
import sys

import chex
import numpy as np
import pytest

from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("datasets")
  return test_utils.write_fake_datasets(str(root))


def _run(module, args, data_dir, tmp_path, check=True, extra_env=None,
         workdir=True):
  # Smoke runs take seconds of compute; most of their time is XLA
  # compilation, which this flag cuts (the values checked are robust to it).
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"),
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  env.pop("DISTILL_JAX_DATA_DIR", None)
  env.update(extra_env or {})
  cmd = [sys.executable, "-m", f"experiments.{module}",
         *([f"--workdir={tmp_path / 'wd'}"] if workdir else []),
         f"--data_dir={data_dir}", "--noprogress", *args]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
  return proc


def assert_one_line_error(proc, message):
  """The run failed with exit status 2 and exactly one `error:` line."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, (proc.returncode, proc.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert message in lines[0], (message, lines[0])


def load_set(path):
  """The distilled set of a run; its images and lrs are finite."""
  from distill_jax.run import storage  # pylint: disable=g-import-not-at-top
  d = storage.load_distilled_set(str(path))
  chex.assert_tree_all_finite((d.images, d.labels))
  if d.raw_lr is not None:
    chex.assert_tree_all_finite(d.raw_lr)
  return d


DISTILL = ["dd_mnist_fixed", "dd_mnist_random", "dd_fashion_mnist",
           "dd_cifar10"]


@pytest.mark.parametrize("module", DISTILL)
def test_smoke(module, fake_data, tmp_path):
  proc = _run(module, ["--preset=smoke"], fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  cfg = importlib.import_module(f"experiments.{module}").PRESETS("smoke")
  wd = tmp_path / "wd"
  report = json.loads((wd / "report.json").read_text())
  assert 0.0 <= report["test_acc"]["mean"] <= 100.0
  assert report["test_acc"]["n"] == cfg.eval_inits
  assert (wd / "steps" / "step_00.png").stat().st_size > 100
  metrics = [json.loads(line) for line in
             (wd / "metrics.jsonl").read_text().splitlines()]
  losses = [m["loss"] for m in metrics if "loss" in m]
  assert len(losses) == cfg.outer_steps and np.all(np.isfinite(losses))
  assert json.loads((wd / "config.json").read_text())["steps"] == cfg.steps
  # 3 outer steps are too few to learn: check the set itself. One image
  # per class per step, steps x epochs learned lrs, the run's dataset.
  d = load_set(wd / "distilled.npz")
  view = d.as_dd()
  shape = (28, 28, 1) if cfg.arch == "lenet" else (32, 32, 3)
  chex.assert_shape(view.x, (cfg.steps, 10, *shape))
  np.testing.assert_array_equal(view.labels,
                                np.tile(np.arange(10), (cfg.steps, 1)))
  chex.assert_shape(view.raw_lr, (cfg.steps * cfg.epochs,))
  assert view.epochs == cfg.epochs
  assert d.dataset == cfg.dataset
  assert (d.init_params is not None) == (cfg.init_mode == "fixed")


def test_dd_learns_above_chance(tmp_path):
  """A short real distillation beats chance by a wide margin.

  On bar-pattern data (`write_fake_datasets(bars=True)`) 30 outer steps of
  DD (random inits, 5 steps x 2 epochs) reach about 45 % on held-out
  networks; the untrained set (1 outer step) stays near the 10 % of chance.
  """
  data_dir = test_utils.write_fake_datasets(str(tmp_path / "bars"),
                                            bars=True)
  args = ["--preset=smoke", "--outer_steps=30", "--lr_init=0.1",
          "--outer_lr=0.1", "--steps=5", "--epochs=2", "--seed=0"]
  _run("dd_fashion_mnist", args, data_dir, tmp_path)
  report = json.loads((tmp_path / "wd" / "report.json").read_text())
  assert report["selected_checkpoint"]["step"] == 30, report
  assert report["test_acc"]["mean"] >= 25.0, report["test_acc"]


def test_pretrain_then_random_pretrained(fake_data, tmp_path):
  _run("pretrain", ["--preset=smoke", "--dataset=usps", "--image_size=28"],
       fake_data, tmp_path)
  pool = tmp_path / "wd" / "pool.npz"
  assert pool.exists()
  proc = _run("dd_mnist_random", [
      "--preset=smoke", "--init_mode=random_pretrained",
      f"--pretrained_pool={pool}", "--pool_heldout=1", "--eval_inits=1"],
              fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--arch=vgg"], "--arch=vgg: value should be one of <lenet|"),
    (["--steps=0"], "steps=0 must be a positive integer"),
    (["--init_mode=random_pretrained"], "needs pretrained_pool"),
])
def test_bad_config_is_one_line(args, message, fake_data, tmp_path):
  proc = _run("dd_mnist_random", ["--preset=smoke", *args], fake_data,
              tmp_path, check=False)
  assert_one_line_error(proc, message)
  assert "Dataset Distillation" not in proc.stderr  # no module docstring


@pytest.mark.parametrize("module,args,message", [
    ("rat_bptt_fashion", ["--workdir={wd}", "--window=0", "--total_steps=20"],
     "window=0 must be in [1, total_steps=20]"),
    ("rat_bptt_mnist", ["--workdir={wd}", "--window=abc"],
     "--window=abc: must be an integer"),
    ("pretrain", ["--workdir={wd}", "extra"],
     "unexpected arguments ['extra']"),
    ("dd_fashion_mnist", [], "--workdir is required"),
])
def test_cli_errors_are_one_line(module, args, message, fake_data, tmp_path):
  args = [a.format(wd=tmp_path / "wd") for a in args]
  proc = _run(module, ["--preset=smoke", *args], fake_data, tmp_path,
              check=False, workdir=False)
  assert_one_line_error(proc, message)
  assert not (tmp_path / "wd").exists()
  assert "Command" not in proc.stderr  # no module docstring


def test_workdir_that_is_a_file(fake_data, tmp_path):
  (tmp_path / "wd").write_text("not a directory")
  proc = _run("dd_mnist_random", ["--preset=smoke"], fake_data, tmp_path,
              check=False)
  assert_one_line_error(proc, "is a file, not a directory")


def test_help_says_what_flags_mean(fake_data, tmp_path):
  proc = _run("dd_fashion_mnist", ["--help"], fake_data, tmp_path,
              check=False)  # absl exits 1 after --help.
  assert "--arch: <lenet|alexcifarnet|convnet|mlp|alexnet>: network architecture" in (
      proc.stdout)
  assert "DistillConfig." not in proc.stdout
  assert "quick: the README's main job" in proc.stdout.replace("\n    ", " ")


@pytest.mark.parametrize("args,message", [
    (["--init_mode=random_pretrained", "--pretrained_pool=/nonexistent.npz"],
     "no such pretrained pool"),
    (["--dataset=nosuchset"], "nosuchset"),
    (["--real_batch=100000"], "exceeds"),
])
def test_bad_flags(args, message, fake_data, tmp_path):
  proc = _run("dd_mnist_random", ["--preset=smoke", *args], fake_data,
              tmp_path, check=False)
  assert proc.returncode == 2, proc.stderr
  assert "error: " in proc.stderr and message in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag, message", [
    ("--malloc_arenas=lots", "error: --malloc_arenas=lots"),
    ("--keep_malloc_mapped=maybe", "error: --keep_malloc_mapped=maybe"),
])
def test_bad_platform_flags(flag, message, fake_data, tmp_path):
  proc = _run("dd_mnist_random", ["--preset=smoke", flag], fake_data,
              tmp_path, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_missing_dataset_names_the_fix(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  env_dir = str(empty)
  proc = _run("dd_mnist_random", ["--preset=smoke", "--dataset=usps"],
              env_dir, tmp_path, check=False)
  assert proc.returncode != 0
  out = proc.stdout + proc.stderr
  assert "DISTILL_JAX_DATA_DIR" in out
  assert "Traceback" not in proc.stderr


def test_tests_never_prepare_into_the_default_tfds_dir():
  # conftest points TFDS_DATA_DIR at a temporary folder for the whole run, so
  # fake data prepared by a test (or by the experiment subprocesses, which
  # inherit it) never reaches the user's ~/tensorflow_datasets.
  tfds_dir = os.environ["TFDS_DATA_DIR"]
  assert "distill_jax_tests_tfds_" in tfds_dir
  assert not tfds_dir.startswith(os.path.expanduser("~/tensorflow_datasets"))
