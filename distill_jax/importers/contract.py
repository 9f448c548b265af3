"""The preprocessing contract of an imported set, and what importers share.

A released distilled set is only meaningful with the preprocessing its
toolkit trained and evaluated it under: the same images read as pixels in
[0, 1] instead of normalised values, or without the ZCA whitening they were
learned in, cost users 20+ points. Every importer therefore records a
`Contract`: the source layout (channel order), the value range, the
per-channel normalisation (mean/std in [0, 1] pixel units, and where the
values came from), whether the images are ZCA-whitened and by which recipe,
the label form and the centring that was undone, and the learned learning
rate where the toolkit learns one. It is stored as
``metadata["contract"]`` of the `DistilledSet` (method ``"imported"``), with
``metadata["source"]`` the format name.
"""

import dataclasses
import os

import numpy as np

from distill_jax.data import registry
from distill_jax.distilled_set import DistilledSet

ZCA_CHOICES = ("auto", "yes", "no")
# Dataset names of other toolkits -> this library's names.
_ALIASES = {"fashionmnist": "fashion_mnist", "fmnist": "fashion_mnist",
            "svhn": "svhn_cropped", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "cifar10_subset": "cifar10",
            "tinyimagenet": "tiny_imagenet", "tiny": "tiny_imagenet"}
# Grayscale digit / letter data: FRePo and RCIG skip ZCA there.
MNIST_TYPE = ("mnist", "fashion_mnist", "kmnist", "emnist", "usps")
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "kmnist": 10, "usps": 10,
               "cifar10": 10, "svhn_cropped": 10, "cifar100": 100,
               "tiny_imagenet": 200}
# The per-channel mean/std computed on each training split (the FRePo, RCIG
# and KIP pipelines standardise with these statistics).
TRAIN_SPLIT_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
# The constants of MTT's `utils.get_dataset` (also DATM's and RaT-BPTT's).
TORCH_CODE_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class ImportFileError(ValueError):
  """A file to import is missing, corrupt, foreign or unsafe (one line)."""


@dataclasses.dataclass(frozen=True)
class Options:
  """What the user says about a file: its dataset, ZCA and normalisation.

  Attributes:
    fmt: the format name (``"mtt"``, ...).
    dataset: the dataset the set was distilled on (this library's name,
      or a path / TFDS name of the user's data).
    zca: ``"auto"`` (the format's default; an error where the file does
      not say), ``"yes"`` or ``"no"``.
    mean: per-channel mean of the source normalisation, or None (known
      per dataset).
    std: per-channel std, or None.
  """
  fmt: str
  dataset: str
  zca: str = "auto"
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Contract:
  """How the source toolkit preprocessed the set (see the module doc)."""
  channel_order: str
  value_range: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  normalisation_from: str
  zca: bool
  zca_recipe: str | None
  zca_from: str
  label_form: str
  label_centring: str | None
  learned_lr: float | None = None
  notes: tuple[str, ...] = ()

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["mean"], out["std"] = list(self.mean), list(self.std)
    out["notes"] = list(self.notes)
    return out


def dataset_key(name: str) -> str:
  """A toolkit's dataset name in this library's spelling (lower case)."""
  key = str(name).strip().lower()
  return _ALIASES.get(key, key)


def fail(path: str, message: str) -> ImportFileError:
  """An `ImportFileError` naming the file, on one line."""
  return ImportFileError(" ".join(f"{path}: {message}".split()))


def normalisation(opts: Options, table: dict, channels: int,
                  table_name: str) -> tuple[tuple, tuple, str]:
  """The source normalisation: --mean/--std, else `table`, else the registry.

  Returns:
    (mean, std, where the values came from), one value per channel.

  Raises:
    ImportFileError: no known normalisation, or a wrong number of values.
  """
  if (opts.mean is None) != (opts.std is None):
    raise ImportFileError("give both --mean and --std (one value per "
                          "channel, or one for all).")
  key = dataset_key(opts.dataset)
  spec = registry.spec(key)
  if opts.mean is not None:
    mean, std, source = opts.mean, opts.std, "given (--mean/--std)"
  elif key in table:
    (mean, std), source = table[key], table_name
  elif spec is not None and spec.stats is not None:
    (mean, std), source = spec.stats, "distill_jax's dataset registry"
  else:
    raise ImportFileError(
        f"dataset {opts.dataset!r} has no known {opts.fmt} normalisation; "
        "give the mean and std the set was normalised with, as --mean=... "
        "--std=... (pixel units in [0, 1], one value per channel).")
  out = []
  for name, v in (("mean", mean), ("std", std)):
    v = tuple(float(a) for a in np.ravel(v))
    if len(v) == 1:
      v = v * channels
    if len(v) != channels:
      raise ImportFileError(f"{name} has {len(v)} values; the images have "
                            f"{channels} channels.")
    out.append(v)
  if min(out[1]) <= 0:
    raise ImportFileError(f"std {list(out[1])} must be positive.")
  return out[0], out[1], source


def resolve_zca(opts: Options, default: bool | None,
                why: str) -> tuple[bool, str]:
  """(whether the images are ZCA-whitened, where that came from).

  Args:
    opts: the user's options (``zca`` auto / yes / no).
    default: the format's answer for ``auto``; None: the user must say.
    why: how the default was decided (recorded), or why the file cannot.

  Raises:
    ImportFileError: ``auto`` where the file does not say.
  """
  if opts.zca not in ZCA_CHOICES:
    raise ImportFileError(f"zca={opts.zca!r}; choose one of {ZCA_CHOICES}.")
  if opts.zca != "auto":
    return opts.zca == "yes", "given (--zca)"
  if default is None:
    raise ImportFileError(f"{opts.fmt}: {why}; say whether the set is "
                          "ZCA-whitened with --zca=yes or --zca=no.")
  return default, why


def num_classes(dataset: str, labels=None, soft=None) -> int:
  """K: the dataset's known class count, else from the labels."""
  key = dataset_key(dataset)
  if key in NUM_CLASSES:
    return NUM_CLASSES[key]
  if soft is not None:
    return int(np.shape(soft)[-1])
  if labels is None or not np.size(labels):
    return 1
  return int(np.max(labels)) + 1


def targets_to_labels(targets, atol: float = 1e-4):
  """(labels, soft labels or None) from (N, K) targets with centring undone.

  Targets that are one-hot (within `atol`) become hard labels; anything
  else is kept as learned soft targets, the class being the argmax.
  """
  t = np.asarray(targets, np.float32)
  labels = np.argmax(t, axis=-1).astype(np.int32)
  onehot = np.eye(t.shape[-1], dtype=np.float32)[labels]
  if np.allclose(t, onehot, atol=atol):
    return labels, None
  return labels, t


def nchw_to_nhwc(x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"images have shape {x.shape}, expected (N, C, H, W).")
  return np.transpose(x, (0, 2, 3, 1))


def build(path: str, opts: Options, images, labels, contract: Contract,
          soft=None, class_names=None, extra=None) -> DistilledSet:
  """The imported `DistilledSet` (method ``"imported"``), validated.

  Args:
    path: the file read (named in errors and in the metadata).
    opts: the user's options.
    images: (N, H, W, C) images in the source's input space.
    labels: (N,) int classes.
    contract: the preprocessing contract.
    soft: (N, K) soft targets, or None.
    class_names: the K names in label order, or None ("0", "1", ...).
    extra: more JSON metadata (e.g. the checkpoint step).

  Raises:
    ImportFileError: the arrays do not form a valid set.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels).astype(np.int32)
  k = (len(class_names) if class_names is not None else
       num_classes(opts.dataset, labels, soft))
  names = tuple(class_names or (str(i) for i in range(k)))
  meta = {"source": opts.fmt, "contract": contract.as_dict(),
          "file": os.path.basename(os.path.normpath(path)), **(extra or {})}
  dset = DistilledSet(
      images=images, labels=labels,
      soft_labels=None if soft is None else np.asarray(soft, np.float32),
      raw_lr=None, schedule=None, block=None,
      mean=np.asarray(contract.mean, np.float32),
      std=np.asarray(contract.std, np.float32), zca=None, init_params=None,
      class_names=names, dataset=opts.dataset, method="imported", model={},
      metadata=meta)
  try:
    return dset.validate()
  except ValueError as e:
    raise fail(path, f"does not form a valid set: {e}") from e


def is_zca(dset: DistilledSet) -> bool:
  """Whether a set is ZCA-whitened: a stored transform, or an imported
  set whose contract says so (the toolkit's transform is not shipped)."""
  contract = dset.metadata.get("contract") if dset.metadata else None
  return dset.zca is not None or bool(
      isinstance(contract, dict) and contract.get("zca"))
