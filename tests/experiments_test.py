"""Every experiment's entry point runs end to end (seconds) and rejects bad
flags with a clear message. Runs as subprocesses on tiny fake local data."""

import json
import os
import subprocess
import sys

import pytest

from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("datasets")
  return test_utils.write_fake_datasets(str(root))


def _run(module, args, data_dir, tmp_path, check=True, extra_env=None):
  # Smoke runs take seconds of compute; most of their time is XLA
  # compilation, which this flag cuts (numerics are not under test here).
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"),
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true")
  env.pop("DISTILL_JAX_DATA_DIR", None)
  env.update(extra_env or {})
  cmd = [sys.executable, "-m", f"experiments.{module}",
         f"--workdir={tmp_path / 'wd'}", f"--data_dir={data_dir}",
         "--noprogress", *args]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}")
  return proc


DISTILL = ["dd_mnist_fixed", "dd_mnist_random", "dd_fashion_mnist",
           "dd_cifar10"]


@pytest.mark.parametrize("module", DISTILL)
def test_smoke(module, fake_data, tmp_path):
  proc = _run(module, ["--preset=smoke"], fake_data, tmp_path)
  assert "test accuracy:" in proc.stdout
  wd = tmp_path / "wd"
  report = json.loads((wd / "report.json").read_text())
  assert 0.0 <= report["test_acc"]["mean"] <= 100.0
  for name in ("distilled.npz", "metrics.jsonl", "config.json",
               "steps/step_00.png"):
    assert (wd / name).exists(), name


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
    (["--arch=vgg"], "value should be one of"),
    (["--steps=0"], "steps=0 must be a positive integer"),
    (["--init_mode=random_pretrained"], "needs pretrained_pool"),
    (["--init_mode=random_pretrained", "--pretrained_pool=/nonexistent.npz"],
     "no such pretrained pool"),
    (["--dataset=nosuchset"], "nosuchset"),
    (["--real_batch=100000"], "exceeds"),
])
def test_bad_flags(args, message, fake_data, tmp_path):
  proc = _run("dd_mnist_random", ["--preset=smoke", *args], fake_data,
              tmp_path, check=False)
  assert proc.returncode != 0
  assert message in proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr


def test_bad_malloc_arenas_env(fake_data, tmp_path):
  proc = _run("dd_mnist_random", ["--preset=smoke"], fake_data, tmp_path,
              check=False, extra_env={"DISTILL_JAX_MALLOC_ARENAS": "lots"})
  assert proc.returncode == 2
  assert "DISTILL_JAX_MALLOC_ARENAS='lots'" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_bad_keep_mapped_env(fake_data, tmp_path):
  proc = _run("dd_mnist_random", ["--preset=smoke"], fake_data, tmp_path,
              check=False,
              extra_env={"DISTILL_JAX_KEEP_MALLOC_MAPPED": "maybe"})
  assert proc.returncode == 2
  assert "DISTILL_JAX_KEEP_MALLOC_MAPPED='maybe'" in proc.stderr
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
