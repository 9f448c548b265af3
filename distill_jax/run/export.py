"""Distilled sets out: a TFDS dataset, or an ImageFolder of PNGs.

Both exports carry what a user of the set needs besides the images: the
labels (hard, and the soft targets where the set learned them), the class
names in label order, the normalisation, and the learned learning rates
and replay schedule of the bilevel methods.

  * `to_tfds(dset, data_dir, name)` writes a TFDS dataset (ArrayRecord, no
    TensorFlow needed) that `tfds.data_source(f"distilled_set/{name}",
    data_dir=data_dir)` serves, and `tfds.load` too where TensorFlow is
    installed. Features: ``image`` float32 (H, W, C) in the model's input
    space (normalised, and ZCA-whitened if the set is), ``pixels`` float32
    (H, W, C) in [0, 1] for viewing, ``label`` (a ``ClassLabel`` with the
    set's class names), ``soft_label`` (K,) float32 when the set has soft
    labels, and ``index``, the image's position in the set. The dataset's
    metadata (``builder.info.metadata``) holds the mean, std, lrs,
    schedule, method, source dataset and model. Examples keep the set's
    order (shuffling is disabled), so the schedule's indices stay valid.
  * `to_image_folder(dset, out_dir)` writes ``out_dir/<kkk>_<class>/<i>.png``
    (8-bit PNG of `DistilledSet.pixels`, the ImageFolder / DD-Ranking
    layout; the zero-padded class index keeps torchvision's alphabetical
    class order equal to the set's label order) and ``out_dir/set.json``
    with the same metadata, and ``out_dir/soft_labels.npy`` when the set
    has soft labels. PNG quantises the images to 8 bits: a user who needs
    the exact floats reads the npz or the TFDS export.

The npz itself needs no distill_jax to read (`numpy_loader_example`).
"""

import json
import os
import re

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from distill_jax.distilled_set import DistilledSet
from distill_jax.run import storage

BUILDER = "distilled_set"

NUMPY_LOADER = '''\
import json
import numpy as np

f = np.load("distilled.npz", allow_pickle=False)
x = f["images"]                  # (N, H, W, C) float32, the model's input
y = f["labels"]                  # (N,) int32 class of each image
names = [str(c) for c in f["class_names"]]
mean, std = f["mean"], f["std"]  # pixels = x * std + mean (no ZCA)
soft = f["soft_labels"] if "soft_labels" in f.files else None
lrs = f["lrs"] if "lrs" in f.files else None          # DD / RaT-BPTT
schedule = f["schedule"] if "schedule" in f.files else None
model = json.loads(str(f["model"]))  # the network it was distilled for
'''


def numpy_loader_example() -> str:
  """A plain-NumPy snippet that reads a `distilled.npz` (no distill_jax)."""
  return NUMPY_LOADER


def _metadata(dset: DistilledSet) -> dict:
  return {
      "format": "distill_jax distilled set",
      "method": dset.method, "dataset": dset.dataset,
      "class_names": list(dset.class_names),
      "mean": np.asarray(dset.mean, float).tolist(),
      "std": np.asarray(dset.std, float).tolist(),
      "zca": dset.zca is not None,
      "lrs": None if dset.lrs is None else np.asarray(dset.lrs,
                                                      float).tolist(),
      "schedule": (None if dset.schedule is None else
                   np.asarray(dset.schedule).tolist()),
      "model": dset.model,
      "num_images": int(len(dset.labels)),
      "soft_labels": dset.soft,
  }


def check_name(name: str) -> str:
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name or ""):
    raise ValueError(f"export name {name!r}: use lower-case letters, digits "
                     "and _, starting with a letter (e.g. fashion_dd).")
  return name


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The TFDS builder of one distilled set (one config per export name)."""

  name = BUILDER
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "A distill_jax distilled set."}
  # TFDS's default lookup of this path needs `importlib_resources`.
  code_path = epath.Path(__file__)

  def __init__(self, dset: DistilledSet, **kwargs):
    self._dset = dset
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    d = self._dset
    shape = tuple(int(s) for s in d.images.shape[1:])
    feats = {
        "image": tfds.features.Tensor(shape=shape, dtype=np.float32),
        "pixels": tfds.features.Tensor(shape=shape, dtype=np.float32),
        "label": tfds.features.ClassLabel(names=list(d.class_names)),
        "index": tfds.features.Scalar(dtype=np.int32),
    }
    if d.soft:
      feats["soft_label"] = tfds.features.Tensor(
          shape=(d.num_classes,), dtype=np.float32)
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{d.method} distilled set of {d.dataset} "
                    f"({len(d.labels)} images).",
        features=tfds.features.FeaturesDict(feats),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(_metadata(d)))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    d = self._dset
    x = np.asarray(d.images, np.float32)
    px = d.pixels().astype(np.float32)
    for i in range(len(x)):
      ex = {"image": x[i], "pixels": px[i], "label": int(d.labels[i]),
            "index": i}
      if d.soft:
        ex["soft_label"] = np.asarray(d.soft_labels[i], np.float32)
      yield i, ex


def to_tfds(dset: DistilledSet, data_dir: str, name: str) -> str:
  """Writes `dset` as the TFDS dataset ``distilled_set/<name>``.

  Returns:
    The dataset's folder (``data_dir/distilled_set/<name>/1.0.0``).

  Raises:
    ValueError: a bad name, or an export of that name already exists.
  """
  check_name(name)
  dset.validate()
  config = tfds.core.BuilderConfig(name=name)
  builder = _Builder(dset, data_dir=data_dir, config=config,
                     file_format="array_record")
  out = os.fspath(builder.data_dir)
  if os.path.exists(os.path.join(out, "dataset_info.json")):
    raise ValueError(f"{out} already holds an export named {name!r}; pick "
                     "another --name or delete that folder.")
  builder.download_and_prepare()
  return out


def _folder(k: int, name: str, width: int) -> str:
  safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"
  return f"{k:0{width}d}_{safe}"


def to_image_folder(dset: DistilledSet, out_dir: str) -> str:
  """Writes ``out_dir/<kkk>_<class>/<i>.png`` and ``out_dir/set.json``.

  Raises:
    ValueError: `out_dir` exists and is not empty.
  """
  dset.validate()
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise ValueError(f"{out_dir} is not empty; export into a new folder.")
  os.makedirs(out_dir, exist_ok=True)
  px = np.round(dset.pixels() * 255.0).astype(np.uint8)
  width = max(3, len(str(dset.num_classes - 1)))
  folders = [_folder(k, n, width) for k, n in enumerate(dset.class_names)]
  files = []
  for i, (img, k) in enumerate(zip(px, np.asarray(dset.labels))):
    rel = os.path.join(folders[k], f"{i:05d}.png")
    os.makedirs(os.path.join(out_dir, folders[k]), exist_ok=True)
    mode = "L" if img.shape[-1] == 1 else "RGB"
    arr = img[..., 0] if mode == "L" else img
    storage.atomic_write(os.path.join(out_dir, rel),
                         lambda f, a=arr, m=mode: Image.fromarray(a, m).save(
                             f, format="PNG"))
    files.append(rel)
  meta = {**_metadata(dset), "files": files, "class_folders": folders,
          "pixels": "8-bit PNG of pixel = image * std + mean, clipped to "
                    "[0, 1] (ZCA sets: un-whitened, stretched per image)"}
  if dset.soft:
    storage.atomic_write(os.path.join(out_dir, "soft_labels.npy"),
                         lambda f: np.save(f, np.asarray(dset.soft_labels,
                                                         np.float32)))
  storage.write_json(os.path.join(out_dir, "set.json"), meta)
  return out_dir


def read_tfds(data_dir: str, name: str):
  """The export's train split as a `tfds.data_source` (random access)."""
  return tfds.data_source(f"{BUILDER}/{check_name(name)}", data_dir=data_dir,
                          split="train")


def export(path: str, out: str, fmt: str, name: str = "") -> str:
  """Loads the set at `path` and exports it as `fmt` ("tfds" or "png")."""
  if fmt not in ("tfds", "png"):
    raise ValueError(f"format={fmt!r}; choose tfds or png.")
  dset = storage.load_distilled_set(path)
  if fmt == "png":
    return to_image_folder(dset, out)
  name = name or check_name(re.sub(r"[^a-z0-9_]+", "_",
                                   f"{dset.dataset}_{dset.method}".lower()))
  return to_tfds(dset, out, name)


def describe(out: str) -> str:
  """One line naming what was written (for the CLI)."""
  info = os.path.join(out, "dataset_info.json")
  if os.path.exists(info):
    with open(info) as f:
      n = json.load(f)["splits"][0]["shardLengths"]
    return f"TFDS dataset in {out} ({sum(int(s) for s in n)} examples)"
  return f"ImageFolder in {out}"
