"""Importers: each toolkit's layout read from a small fixture, its contract
recorded, unsafe and corrupt files refused in one line, and an imported
set scored end to end by the fair evaluation."""

import json
import os
import struct
import subprocess
import sys
import zipfile

from flax import serialization
import numpy as np
import pytest

from distill_jax import importers
from distill_jax.distilled_set import DistilledSet
from distill_jax.methods.decoupled import config as decoupled_config
from distill_jax.run import export
from distill_jax.run import storage
from distill_jax.run import train_decoupled
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD_MTT = (0.2023, 0.1994, 0.2010)


# torch.save's zip layout, written by hand (torch is not a dependency).

def _str(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int(i: int) -> bytes:
  return b"J" + struct.pack("<i", i)  # BININT


def _tuple(items) -> bytes:
  return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


_STORAGE = {"float32": "FloatStorage", "int64": "LongStorage"}


def _tensor_pickle(arr: np.ndarray) -> bytes:
  """What torch.save pickles for one contiguous CPU tensor."""
  pid = _tuple([_str("storage"), _global("torch", _STORAGE[arr.dtype.name]),
                _str("0"), _str("cpu"), _int(arr.size)]) + b"Q"  # BINPERSID
  strides = [int(np.prod(arr.shape[i + 1:])) for i in range(arr.ndim)]
  args = _tuple([pid, _int(0), _tuple([_int(s) for s in arr.shape]),
                 _tuple([_int(s) for s in strides]), b"\x89",  # False
                 _global("collections", "OrderedDict") + b")R"])
  return (b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2") + args
          + b"R.")


def write_pt(path, arr=None, pickle_bytes=None):
  """A torch.save zip file of one tensor (or of the given pickle)."""
  name = os.path.splitext(os.path.basename(str(path)))[0]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{name}/data.pkl", pickle_bytes or _tensor_pickle(arr))
    z.writestr(f"{name}/byteorder", "little")
    if arr is not None:
      z.writestr(f"{name}/data/0", np.ascontiguousarray(arr).tobytes())
    z.writestr(f"{name}/version", "3\n")


def _mtt_run(folder, soft=False, n=4, lr=0.01):
  rng = np.random.default_rng(0)
  os.makedirs(folder, exist_ok=True)
  x = rng.normal(size=(n, 3, 8, 6)).astype(np.float32)  # NCHW, H != W.
  y = (rng.normal(size=(n, 10)).astype(np.float32) if soft else
       np.arange(n, dtype=np.int64) % 10)
  write_pt(os.path.join(folder, "images_best.pt"), x)
  write_pt(os.path.join(folder, "labels_best.pt"), y)
  write_pt(os.path.join(folder, "lr_best.pt"), np.array(lr, np.float32))
  return x, y


def _contract(d: DistilledSet) -> dict:
  assert d.method == "imported"
  return d.metadata["contract"]


def test_mtt_run_folder(tmp_path):
  x, y = _mtt_run(tmp_path / "run")
  d = importers.load("mtt", str(tmp_path / "run"), dataset="cifar10",
                     zca="no")
  np.testing.assert_array_equal(d.images, x.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(d.labels, y)
  assert d.soft_labels is None and d.metadata["source"] == "mtt"
  c = _contract(d)
  assert c["mean"] == pytest.approx(CIFAR_MEAN)
  assert c["std"] == pytest.approx(CIFAR_STD_MTT)
  assert c["zca"] is False and c["learned_lr"] == pytest.approx(0.01)
  assert c["channel_order"].startswith("NCHW")
  with pytest.raises(importers.ImportFileError, match="--zca=yes or --zca=no"):
    importers.load("mtt", str(tmp_path / "run"), dataset="cifar10")


def test_datm_soft_labels_from_an_images_file(tmp_path):
  _, y = _mtt_run(tmp_path / "run", soft=True)
  d = importers.load("mtt", str(tmp_path / "run" / "images_best.pt"),
                     dataset="cifar10", zca="yes")
  np.testing.assert_array_equal(d.soft_labels, y)
  np.testing.assert_array_equal(d.labels, np.argmax(y, -1))
  c = _contract(d)
  assert c["zca"] and "kornia" in c["zca_recipe"]
  assert "DATM" in c["label_form"]


def test_pt_reader_refuses_code_before_it_runs(tmp_path):
  _mtt_run(tmp_path / "run")
  marker = tmp_path / "pwned"
  evil = (b"\x80\x02" + _global("os", "system") +
          _tuple([_str(f"touch {marker}")]) + b"R.")
  write_pt(tmp_path / "run" / "labels_best.pt", pickle_bytes=evil)
  with pytest.raises(importers.ImportFileError) as e:
    importers.load("mtt", str(tmp_path / "run"), dataset="cifar10",
                   zca="no")
  msg = str(e.value)
  assert "refused to unpickle os.system" in msg and "\n" not in msg
  assert not marker.exists()


def _frepo_targets(k, labels, soft_delta=0.0):
  onehot = np.eye(k, dtype=np.float32)[labels] + soft_delta
  return (onehot - 1.0 / k) / np.sqrt(k / 10.0)


def test_frepo_checkpoint_folder_newest(tmp_path):
  rng = np.random.default_rng(1)
  labels = np.arange(6) % 3
  x = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  for step, scale in ((10, 0.0), (200, 1.0)):
    proto = {"x_proto": x * scale, "y_proto": _frepo_targets(3, labels)}
    tree = {"step": step, "params": {"ProtoHolder_0": proto},
            "ema_params": {"ProtoHolder_0": {
                "x_proto": x * 0 - 1, "y_proto": proto["y_proto"]}}}
    (ckpt / f"checkpoint_{step}").write_bytes(
        serialization.msgpack_serialize(tree))
  d = importers.load("frepo", str(ckpt), dataset="cifar10")
  np.testing.assert_allclose(d.images, x)  # step 200, not the EMA copy.
  np.testing.assert_array_equal(d.labels, labels)
  assert d.soft_labels is None and d.metadata["checkpoint_step"] == 200
  c = _contract(d)
  assert c["zca"] and "FRePo" in c["zca_recipe"]
  assert "sqrt(K/10)" in c["label_centring"]
  assert c["notes"] == ["read from params/ProtoHolder_0/x_proto"]
  # MNIST-type data: no ZCA by default; --zca overrides.
  d = importers.load("frepo", str(ckpt), dataset="mnist", mean=(0.5,),
                     std=(0.5,))
  assert not _contract(d)["zca"] and _contract(d)["mean"] == [0.5] * 3


def test_rcig_npz_soft_labels(tmp_path):
  labels = np.arange(4) % 2
  y = np.eye(2, dtype=np.float32)[labels] - 0.5
  y[0] += (0.2, -0.1)  # learned away from one-hot.
  x = np.ones((4, 4, 4, 1), np.float32)
  np.savez(tmp_path / "rcig.npz", x_proto=x, y_proto=y)
  d = importers.load("rcig", str(tmp_path / "rcig.npz"), dataset="mnist",
                     zca="no")
  np.testing.assert_allclose(d.soft_labels, y + 0.5)
  np.testing.assert_array_equal(d.labels, labels)
  c = _contract(d)
  assert c["label_centring"].startswith("one_hot - 1/K (assumed)")
  assert c["mean"] == pytest.approx([0.1307])


def test_kip_npz_zca_from_the_name(tmp_path):
  labels = np.arange(10)
  y = np.eye(10, dtype=np.float32)[labels] - 0.1
  x = np.zeros((10, 4, 4, 3), np.float32)
  path = tmp_path / "kip_cifar10_ConvNet_ssize10_zca_nol_noaug_ckpt1000.npz"
  np.savez(path, images=x, labels=y)
  d = importers.load("kip", str(path), dataset="cifar10")
  np.testing.assert_array_equal(d.labels, labels)
  assert d.soft_labels is None
  c = _contract(d)
  assert c["zca"] and c["zca_from"] == "guessed from the file name"
  assert c["std"] == pytest.approx((0.2470, 0.2435, 0.2616))
  plain = tmp_path / "kip_cifar10_nozca.npz"
  np.savez(plain, images=x, labels=y)
  assert not _contract(importers.load("kip", str(plain),
                                      dataset="cifar10"))["zca"]
  other = tmp_path / "support.npz"
  np.savez(other, images=x, labels=y)
  with pytest.raises(importers.ImportFileError, match="does not say"):
    importers.load("kip", str(other), dataset="cifar10")


def test_rat_bptt_h5(tmp_path):
  h5py = pytest.importorskip("h5py")
  rng = np.random.default_rng(2)
  nchw = rng.normal(size=(20, 1, 28, 28)).astype(np.float32)
  with h5py.File(tmp_path / "rat.h5", "w") as f:
    f["data"] = nchw.reshape(20, -1)  # rows of C*H*W.
    f["epoch"] = 300
  d = importers.load("rat_bptt_h5", str(tmp_path / "rat.h5"),
                     dataset="fashion_mnist", zca="no")
  np.testing.assert_array_equal(d.images, nchw.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(d.labels, np.repeat(np.arange(10), 2))
  assert d.metadata["epoch"] == 300 and d.soft_labels is None
  c = _contract(d)
  assert c["mean"] == pytest.approx([0.2861]) and c["zca"] is False
  with pytest.raises(importers.ImportFileError, match="--zca"):
    importers.load("rat_bptt_h5", str(tmp_path / "rat.h5"),
                   dataset="fashion_mnist")
  soft = rng.random((20, 10)).astype(np.float32)
  rgb = rng.normal(size=(20, 3 * 4 * 4)).astype(np.float32)
  with h5py.File(tmp_path / "rgb.h5", "w") as f:
    f["data"], f["label"] = rgb, soft
  d = importers.load("rat_bptt_h5", str(tmp_path / "rgb.h5"),
                     dataset="my_data", zca="yes", mean=(0.5,), std=(0.25,))
  np.testing.assert_array_equal(d.images,
                                rgb.reshape(20, 3, 4, 4).transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(d.soft_labels, soft)
  c = _contract(d)
  assert c["zca"] and c["std"] == [0.25] * 3
  assert c["normalisation_from"] == "given (--mean/--std)"


def _exported(tmp_path, soft=True):
  rng = np.random.default_rng(3)
  d = DistilledSet.from_per_class(
      rng.normal(size=(3, 2, 4, 4, 3)).astype(np.float32),
      rng.random((3, 2, 3)).astype(np.float32) if soft else None,
      mean=CIFAR_MEAN, std=(0.25,) * 3, class_names=("cat", "b/c", "z"),
      dataset="cifar10", method="rat_bptt", model={}, metadata={})
  out = str(tmp_path / "png")
  export.to_image_folder(d, out)
  return d, out


def test_dd_ranking_folder_reads_an_export_back(tmp_path):
  src, out = _exported(tmp_path)
  d = importers.load("dd_ranking_folder", out, dataset="cifar10")
  assert d.class_names == ("cat", "b/c", "z")
  np.testing.assert_array_equal(d.labels, src.labels)
  np.testing.assert_allclose(d.pixels(), src.pixels(), atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(d.soft_labels, src.soft_labels)
  c = _contract(d)
  assert c["value_range"] == "pixels in [0, 1]" and c["mean"] == [0.0] * 3
  with pytest.raises(importers.ImportFileError, match="do not apply"):
    importers.load("dd_ranking_folder", out, dataset="cifar10", zca="yes")


def test_dd_ranking_plain_image_folder(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for cls, value in (("b_dog", 200), ("a_cat", 100)):
    (tmp_path / "f" / cls).mkdir(parents=True)
    for i in range(2):
      Image.fromarray(np.full((5, 5), value + i, np.uint8), "L").save(
          tmp_path / "f" / cls / f"{i}.png")
  (tmp_path / "f" / "a_cat" / "notes.txt").write_text("ignored")
  d = importers.load("dd_ranking_folder", str(tmp_path / "f"),
                     dataset="something_new")
  assert d.class_names == ("a_cat", "b_dog") and d.images.shape == (4, 5, 5, 1)
  np.testing.assert_array_equal(d.labels, [0, 0, 1, 1])
  np.testing.assert_allclose(d.images[:, 0, 0, 0],
                             np.array([100, 101, 200, 201]) / 255.0)


def test_normalised_as_and_unknown_normalisation(tmp_path):
  src, _ = _exported(tmp_path, soft=False)
  back = src.normalised_as((0.5, 0.5, 0.5), 0.5)
  np.testing.assert_allclose(back.images * 0.5 + 0.5,
                             src.images * src.std + src.mean, atol=1e-6)
  assert src.normalised_as(src.mean, src.std) is src
  _mtt_run(tmp_path / "run")
  with pytest.raises(importers.ImportFileError, match="--mean=... --std="):
    importers.load("mtt", str(tmp_path / "run"), dataset="my_data",
                   zca="no")
  with pytest.raises(importers.ImportFileError, match="choose one of"):
    importers.load("magic", str(tmp_path), dataset="cifar10")


def _fair_cfg(cache):
  return decoupled_config.DecoupledConfig(
      eval_random=False, eval_metrics=False, teacher_cache=str(cache)
  ).replace_flat(teacher_width=8, teacher_depth=2, teacher_epochs=3,
                 teacher_batch_size=32, teacher_lr=0.05, post_width=8,
                 post_depth=2, post_epochs=6, post_eval_every=3,
                 post_students=1, post_lr=0.01, post_min_scale=0.5)


def test_imported_set_through_the_fair_evaluation(tmp_path):
  ds = test_utils.tiny_dataset(n_train=120, n_val=15, n_test=30,
                               shape=(8, 8, 1))
  k = ds.num_classes
  # The class means of the real images, saved by a "toolkit" normalising
  # with mean 0.3, std 0.5 instead of the dataset's 0.5, 0.25.
  means = np.stack([ds.x_train[ds.y_train == c][:4] for c in range(k)])
  pixels = means.reshape(-1, 8, 8, 1) * 0.25 + 0.5
  theirs = (pixels - 0.3) / 0.5
  np.savez(tmp_path / "kip_blobs_nozca.npz", images=theirs,
           labels=np.eye(k, dtype=np.float32)[np.repeat(np.arange(k), 4)]
           - 1.0 / k)
  dset = importers.load("kip", str(tmp_path / "kip_blobs_nozca.npz"),
                        dataset="blobs", mean=(0.3,), std=(0.5,))
  path = str(tmp_path / "distilled.npz")
  storage.save_distilled_set(path, dset)
  np.testing.assert_allclose(
      storage.load_distilled_set(path).normalised_as(ds.mean, ds.std).images,
      means.reshape(-1, 8, 8, 1), atol=1e-5)
  report = train_decoupled.evaluate_file(
      _fair_cfg(tmp_path / "teachers"), str(tmp_path / "wd"), distilled=path,
      dataset=ds, show_progress=False)
  assert report["method"] == "imported" and report["ipc"] == 4
  assert report["imported"]["source"] == "kip"
  ev = report["evaluation"]
  assert ev["soft"]["test_acc"]["n"] == 1
  # Chance is 33 %; real images of separable blobs, in the right space.
  assert ev["hard"]["test_acc"]["mean"] > 50.0, ev["hard"]
  assert json.loads((tmp_path / "wd" / "report.json").read_text())[
      "imported"]["contract"]["mean"] == [0.3]


def test_fair_evaluation_refuses_an_imported_zca_set(tmp_path):
  x = np.zeros((10, 4, 4, 3), np.float32)
  np.savez(tmp_path / "kip_zca.npz", images=x, labels=np.arange(10))
  path = str(tmp_path / "distilled.npz")
  storage.save_distilled_set(path, importers.load(
      "kip", str(tmp_path / "kip_zca.npz"), dataset="cifar10"))
  with pytest.raises(ValueError, match="contract says ZCA") as e:
    train_decoupled.evaluate_file(_fair_cfg(tmp_path), str(tmp_path / "wd"),
                                  distilled=path, show_progress=False)
  assert "\n" not in str(e.value)


def _cli(args, tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.import_set",
                         *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False, timeout=120)


def _one_line_error(proc, message):
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ") and message in lines[0], lines


def test_cli(tmp_path):
  _mtt_run(tmp_path / "run")
  out = tmp_path / "w" / "distilled.npz"
  proc = _cli(["--format=mtt", f"--input={tmp_path / 'run'}",
               "--dataset=cifar10", "--zca=no", f"--out={out}"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert "4 images (8, 6, 3)" in proc.stdout and "no ZCA" in proc.stdout
  d = storage.load_distilled_set(str(out))
  assert d.method == "imported" and d.metadata["source"] == "mtt"
  # A truncated .pt: one line, no traceback.
  pt = tmp_path / "run" / "images_best.pt"
  pt.write_bytes(pt.read_bytes()[:200])
  _one_line_error(_cli(["--format=mtt", f"--input={tmp_path / 'run'}",
                        "--dataset=cifar10", "--zca=no", f"--out={out}"],
                       tmp_path), "not a torch.save file")
  _one_line_error(_cli(["--format=pkl", f"--input={tmp_path}",
                        "--dataset=cifar10", f"--out={out}"], tmp_path),
                  "--format")
