"""Distilled sets out: TFDS, ImageFolder, and the plain-NumPy loader."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from distill_jax.distilled_set import DistilledSet
from distill_jax.run import export
from distill_jax.run import storage
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(soft=False, seed=0):
  """A DD-shaped set: 2 steps x 3 classes of 4x4x1 images, learned lrs."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, 3, 4, 4, 1)).astype(np.float32)
  labels = np.tile(np.arange(3), (2, 1))
  return DistilledSet.from_dd(
      x, labels, rng.normal(size=4).astype(np.float32), epochs=2,
      mean=(0.4,), std=(0.2,), class_names=("a b", "c/d", "e"),
      dataset="toy", model={"arch": "lenet"}, metadata={},
      soft_labels=(rng.random((2, 3, 3)).astype(np.float32) if soft
                   else None))


@pytest.mark.parametrize("soft", [False, True])
def test_tfds_round_trip(soft, tmp_path):
  d = _set(soft=soft)
  out = export.to_tfds(d, str(tmp_path), "toy_dd")
  assert out.endswith(os.path.join("distilled_set", "toy_dd", "1.0.0"))
  src = export.read_tfds(str(tmp_path), "toy_dd")
  assert len(src) == 6
  ex = [src[i] for i in range(6)]
  np.testing.assert_array_equal(np.stack([e["image"] for e in ex]), d.images)
  np.testing.assert_array_equal([e["label"] for e in ex], d.labels)
  np.testing.assert_array_equal([e["index"] for e in ex], np.arange(6))
  np.testing.assert_allclose(np.stack([e["pixels"] for e in ex]), d.pixels())
  if soft:
    np.testing.assert_array_equal(np.stack([e["soft_label"] for e in ex]),
                                  d.soft_labels)
  else:
    assert "soft_label" not in ex[0]
  info = tfds.builder("distilled_set/toy_dd", data_dir=str(tmp_path)).info
  assert info.features["label"].names == ["a b", "c/d", "e"]
  np.testing.assert_allclose(info.metadata["lrs"], d.lrs, rtol=1e-6)
  assert info.metadata["schedule"] == d.schedule.tolist()
  assert info.metadata["mean"] == pytest.approx([0.4])
  assert info.metadata["method"] == "dd"


def test_tfds_load_with_tensorflow(tmp_path):
  pytest.importorskip("tensorflow")
  export.to_tfds(_set(), str(tmp_path), "toy_dd")
  ds = tfds.load("distilled_set/toy_dd", data_dir=str(tmp_path),
                 split="train", download=False)
  assert len(list(tfds.as_numpy(ds))) == 6


def test_tfds_refuses_bad_name_and_overwrite(tmp_path):
  with pytest.raises(ValueError, match="lower-case"):
    export.to_tfds(_set(), str(tmp_path), "Bad-Name")
  export.to_tfds(_set(), str(tmp_path), "toy_dd")
  with pytest.raises(ValueError, match="already holds"):
    export.to_tfds(_set(), str(tmp_path), "toy_dd")


def test_image_folder(tmp_path):
  d = _set(soft=True)
  out = str(tmp_path / "png")
  export.to_image_folder(d, out)
  folders = sorted(f for f in os.listdir(out)
                   if os.path.isdir(os.path.join(out, f)))
  # Alphabetical order (torchvision's ImageFolder) is the label order.
  assert folders == ["000_a_b", "001_c_d", "002_e"]
  meta = json.loads(open(os.path.join(out, "set.json")).read())
  assert meta["class_names"] == ["a b", "c/d", "e"] and len(meta["files"]) == 6
  want = np.round(d.pixels() * 255).astype(np.uint8)
  for i, rel in enumerate(meta["files"]):
    assert rel.startswith(folders[d.labels[i]])
    got = np.asarray(Image.open(os.path.join(out, rel)))
    np.testing.assert_array_equal(got, want[i, ..., 0])
  np.testing.assert_array_equal(np.load(os.path.join(out, "soft_labels.npy")),
                                d.soft_labels)
  with pytest.raises(ValueError, match="not empty"):
    export.to_image_folder(d, out)


_TRAIN_WITHOUT_LIBRARY = r'''
import sys
import numpy as np
{loader}
test = np.load(sys.argv[1])
k = len(names)
w = np.zeros((x[0].size, k)); b = np.zeros(k)
flat = x.reshape(len(x), -1)
onehot = np.eye(k)[y]
for _ in range(300):                     # softmax regression, full batch GD
  z = flat @ w + b
  p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
  w -= 0.1 * flat.T @ (p - onehot) / len(x); b -= 0.1 * (p - onehot).mean(0)
xt = ((test["x"] - mean) / std).reshape(len(test["x"]), -1)
acc = float(np.mean(np.argmax(xt @ w + b, 1) == test["y"]))
assert "distill_jax" not in sys.modules
print(acc)
'''


def test_plain_numpy_loader_trains_without_distill_jax(tmp_path):
  ds = test_utils.tiny_dataset(n_train=60, n_test=60)
  k = ds.num_classes
  # An "average real" set: the mean training image of each class.
  x = np.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(k)])
  mean, std = np.float32(0.5), np.float32(0.25)
  dset = DistilledSet.from_per_class(
      ((x - mean) / std)[:, None], mean=(0.5,) * x.shape[-1],
      std=(0.25,) * x.shape[-1], class_names=ds.class_names, dataset="blobs",
      method="random_real", model={"arch": "mlp"}, metadata={})
  storage.save_distilled_set(str(tmp_path / "distilled.npz"), dset)
  np.savez(tmp_path / "test.npz", x=ds.x_test, y=ds.y_test)
  script = tmp_path / "train.py"
  script.write_text(_TRAIN_WITHOUT_LIBRARY.format(
      loader=export.numpy_loader_example()))
  proc = subprocess.run([sys.executable, "-I", str(script),
                         str(tmp_path / "test.npz")], cwd=tmp_path,
                        capture_output=True, text=True, check=True)
  # Chance is 1 / 3; the class means separate the blobs (75 % measured).
  assert float(proc.stdout.strip()) >= 0.6, proc.stdout


def _cli(args, tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.export_set",
                         *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False)


def test_cli(tmp_path):
  path = str(tmp_path / "distilled.npz")
  storage.save_distilled_set(path, _set())
  proc = _cli([f"--distilled={path}", f"--out={tmp_path / 'tf'}"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "TFDS dataset in" in proc.stdout and "(6 examples)" in proc.stdout
  assert len(export.read_tfds(str(tmp_path / "tf"), "toy_dd")) == 6
  proc = _cli([f"--distilled={path}", f"--out={tmp_path / 'png'}",
               "--format=png"], tmp_path)
  assert proc.returncode == 0 and "ImageFolder" in proc.stdout, proc.stderr
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip")
  for args, message in (
      ([f"--distilled={bad}", f"--out={tmp_path / 'x'}"], "not a readable"),
      ([f"--distilled={path}", f"--out={tmp_path / 'x'}", "--name=A-b"],
       "lower-case"),
      ([f"--distilled={path}", f"--out={tmp_path / 'x'}", "--format=gif"],
       "--format")):
    proc = _cli(args, tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines
