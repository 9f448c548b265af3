"""PASCAL-VOC and CUB-200 as single-label classification (DD's Table 3).

Targets:
  * ``voc``: TFDS ``voc`` (VOC 2007), 20 classes. An image's label is the
    label of its LARGEST object (bounding-box area; the first such object
    on ties; "difficult" objects count). Train = the ``train`` and
    ``validation`` splits, test = ``test``.
  * ``caltech_birds2011``: TFDS CUB-200-2011, 200 classes, its ``label``;
    train = ``train``, test = ``test``.
  * ``fake``: VOC-style examples drawn here (images of varying size whose
    colour depends on the largest object's class), for tests and the smoke
    preset; the same conversion path as ``voc``.

Images are resized to ``image_size`` x ``image_size`` (PIL bilinear; 224 for
ImageNet weights) and normalised with the ImageNet mean and std (the
statistics the pretrained network was trained with), never with statistics
computed on the target. The validation split is held out of train
(class-stratified, seeded).
"""

import numpy as np

from distill_jax.data import base
from distill_jax.data import readers
from distill_jax.data import splits
from distill_jax.data import transforms

TARGETS = ("voc", "caltech_birds2011", "fake")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TFDS = {"voc": ("voc/2007", ("train", "validation"), "test"),
         "caltech_birds2011": ("caltech_birds2011", ("train",), "test")}


def largest_object(objects: dict) -> int:
  """The label of the largest object of a TFDS VOC example's "objects"
  (bbox = (ymin, xmin, ymax, xmax)); -1 if there is none."""
  labels = np.asarray(objects["label"]).reshape(-1)
  box = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
  n = min(len(labels), len(box))  # equal, except in TFDS's mock data.
  labels, box = labels[:n], box[:n]
  if not n:
    return -1
  area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
  return int(labels[int(np.argmax(area))])


def to_arrays(examples, task: str, size: int):
  """(uint8 images (N, size, size, 3), int32 labels) of TFDS-style
  examples: dicts with "image" and "objects" (voc, fake) or "label"
  (caltech_birds2011). Examples without objects are skipped."""
  xs, ys = [], []
  for e in examples:
    label = largest_object(e["objects"]) if task != "caltech_birds2011" else (
        int(e["label"]))
    if label < 0:
      continue
    image = np.asarray(e["image"], np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
      image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    xs.append(readers.fit_image(image, (size, size)))
    ys.append(label)
  if not xs:
    raise ValueError(f"{task}: no labelled images were read.")
  return np.stack(xs), np.asarray(ys, np.int32)


def fake_examples(n: int, num_classes: int, seed: int) -> list[dict]:
  """`n` VOC-style examples: 1-3 objects each, images 40-90 px, tinted by
  the largest object's class (so a network can learn them)."""
  rng = np.random.default_rng(seed)
  palette = rng.uniform(0, 255, (num_classes, 3))
  out = []
  for i in range(n):
    k = int(rng.integers(1, 4))
    labels = rng.integers(0, num_classes, k)
    labels[0] = i % num_classes
    lo = rng.uniform(0.0, 0.4, (k, 2))
    hi = lo + rng.uniform(0.1, 0.5, (k, 2))
    hi[0] = lo[0] + 0.55  # object 0 is the largest.
    h, w = (int(v) for v in rng.integers(40, 90, 2))
    image = palette[labels[0]] + rng.normal(0, 40, (h, w, 3))
    out.append({"image": np.clip(image, 0, 255).astype(np.uint8),
                "objects": {"label": labels,
                            "bbox": np.concatenate([lo, hi], 1)}})
  return out


def _tfds_split(builder, split: str):
  source = builder.as_data_source(split)
  return (source[i] for i in range(len(source)))


def _read_tfds(task: str, size: int, data_dir: str | None):
  """Raw splits of a TFDS target (prepared once; needs network access)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, train_splits, test_split = _TFDS[task]
  try:
    builder = tfds.builder(name, data_dir=data_dir,
                           file_format="array_record")
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    raise base.DatasetNotFoundError(
        f"TFDS {name!r} could not be prepared ({base.one_line(e)[:160]}); "
        "preparing it needs network access and TensorFlow once (pip install "
        "tensorflow-cpu), or a prepared copy under $TFDS_DATA_DIR; use "
        "--target=fake offline.") from e
  parts = [to_arrays(_tfds_split(builder, s), task, size)
           for s in train_splits]
  x_test, y_test = to_arrays(_tfds_split(builder, test_split), task, size)
  feature = (builder.info.features["objects"]["label"] if task == "voc"
             else builder.info.features["label"])
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]), x_test, y_test,
          tuple(feature.names), f"tfds:{name}")


def load(target: str, *, image_size: int, val_size: int, seed: int,
         train_limit: int = 0, fake_classes: int = 4, fake_train: int = 48,
         data_dir: str | None = None) -> base.Dataset:
  """The target dataset, normalised with the ImageNet statistics.

  Args:
    target: one of `TARGETS`.
    image_size: side every image is resized to.
    val_size: training images held out as validation (stratified).
    seed: seed of the validation split (and of the fake data).
    train_limit: keep a stratified random subset of this many training
      images (0: all).
    fake_classes: classes of ``fake``.
    fake_train: training images of ``fake`` (test: half as many).
    data_dir: TFDS data dir (default: $TFDS_DATA_DIR).

  Returns:
    A `data.Dataset`.
  """
  if target not in TARGETS:
    raise ValueError(f"target={target!r}; choose one of {TARGETS}.")
  if target == "fake":
    x_train, y_train = to_arrays(
        fake_examples(fake_train, fake_classes, seed), "fake", image_size)
    x_test, y_test = to_arrays(
        fake_examples(max(fake_classes, fake_train // 2), fake_classes,
                      seed + 1), "fake", image_size)
    names = tuple(f"class_{c}" for c in range(fake_classes))
    source = "fake"
  else:
    x_train, y_train, x_test, y_test, names, source = _read_tfds(
        target, image_size, data_dir)
  if train_limit and train_limit < len(y_train):
    x_train, y_train = splits.stratified_subset(x_train, y_train,
                                                train_limit, seed)
  x_train, y_train, x_val, y_val = splits.split_validation(
      x_train, y_train, val_size, seed)
  norm = lambda x: transforms.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
  return base.Dataset(
      name=target, x_train=norm(x_train), y_train=y_train, x_val=norm(x_val),
      y_val=y_val, x_test=norm(x_test), y_test=y_test.astype(np.int32),
      num_classes=len(names), mean=IMAGENET_MEAN, std=IMAGENET_STD,
      class_names=names, source=source)
