"""FRePo and RCIG sets: ``x_proto`` / ``y_proto`` of a JAX checkpoint.

Both toolkits hold the distilled set as two parameters of a flax module,
``x_proto`` (N, H, W, C) in the standardised (and, except on MNIST-type
data, ZCA-whitened) input space and ``y_proto`` (N, K) the learned labels,
kept centred:

  FRePo  y_proto = (one_hot - 1/K) / sqrt(K / 10)
  RCIG   y_proto = one_hot - 1/K (assumed: written from the paper and its
         public notebooks, not from a released file)

The importer reads a flax msgpack checkpoint (``flax.training.checkpoints``
files ``checkpoint_<step>``; a folder gives its newest) or an npz with the
two arrays, undoes the centring and keeps labels that have moved away from
one-hot as soft targets.
"""

import os
import re
import zipfile

from flax import serialization
import numpy as np

from distill_jax.importers import contract as contract_lib

CENTRING = {
    "frepo": "(one_hot - 1/K) / sqrt(K/10), undone",
    "rcig": "one_hot - 1/K (assumed), undone",
}
ZCA_RECIPE = {
    "frepo": "FRePo's preprocessing: per-channel standardisation, then ZCA "
             "(regularisation 0.1) fitted on the training split",
    "rcig": "as FRePo's (RCIG reuses its pipeline; assumed)",
}


def uncentre(fmt: str, y: np.ndarray) -> np.ndarray:
  """The (N, K) targets before the toolkit's label centring."""
  k = y.shape[-1]
  y = np.asarray(y, np.float32)
  if fmt == "frepo":
    y = y * np.sqrt(k / 10.0)
  return (y + 1.0 / k).astype(np.float32)


def newest_checkpoint(path: str) -> tuple[str, int | None]:
  """(file, step): `path` itself, or the newest checkpoint_<step> in it."""
  if not os.path.isdir(path):
    m = re.search(r"checkpoint_(\d+)$", os.path.basename(path))
    return path, int(m.group(1)) if m else None
  steps = [(int(m.group(1)), name) for name in os.listdir(path)
           if (m := re.fullmatch(r"checkpoint_(\d+)", name))]
  if not steps:
    raise contract_lib.fail(path, "holds no flax checkpoint (files "
                            "checkpoint_<step>).")
  step, name = max(steps)
  return os.path.join(path, name), step


def _walk(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _walk(v, prefix + (str(k),))
  else:
    yield prefix, tree


def _read_tree(path: str) -> dict:
  """The checkpoint as a flat {key path: array}: msgpack or npz."""
  if zipfile.is_zipfile(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        return {tuple(k.split("/")): z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
      raise contract_lib.fail(path, f"is not a readable npz: {e}") from e
  with open(path, "rb") as f:
    raw = f.read()
  try:
    tree = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises many types on corrupt bytes.
    raise contract_lib.fail(path, "is neither a flax msgpack checkpoint nor "
                            f"an npz (truncated or corrupt?): "
                            f"{type(e).__name__}: {e}") from e
  if not isinstance(tree, dict):
    raise contract_lib.fail(path, "is a msgpack file but not a flax "
                            "checkpoint (no dict of parameters).")
  return dict(_walk(tree))


def find_protos(flat: dict, path: str) -> tuple[np.ndarray, np.ndarray, str]:
  """(x_proto, y_proto, where) from a flat tree: the pair under one parent,
  preferring the plain parameters over an EMA copy, then the shortest path.
  """
  parents = {}
  for key, value in flat.items():
    if key and key[-1] in ("x_proto", "y_proto"):
      parents.setdefault(key[:-1], {})[key[-1]] = value
  pairs = [p for p, v in parents.items() if len(v) == 2]
  if not pairs:
    keys = ["/".join(k) for k in list(flat)[:6]]
    raise contract_lib.fail(path, "holds no x_proto and y_proto (a FRePo/"
                            f"RCIG checkpoint has both); keys {keys}.")
  best = min(pairs, key=lambda p: (any("ema" in s for s in p), len(p), p))
  got = parents[best]
  return (np.asarray(got["x_proto"]), np.asarray(got["y_proto"]),
          "/".join(best + ("x_proto",)))


def load(path: str, opts: contract_lib.Options):
  """A FRePo (``opts.fmt == "frepo"``) or RCIG set (module docstring).

  Raises:
    ImportFileError: no checkpoint, unreadable file, or arrays of the wrong
      shapes.
  """
  fmt = opts.fmt
  file, step = newest_checkpoint(path)
  x, y, where = find_protos(_read_tree(file), file)
  if x.ndim != 4 or y.ndim != 2 or y.shape[0] != x.shape[0]:
    raise contract_lib.fail(file, f"x_proto {x.shape} / y_proto {y.shape} "
                            "are not (N, H, W, C) images and (N, K) labels.")
  labels, soft = contract_lib.targets_to_labels(uncentre(fmt, y))
  mean, std, norm_from = contract_lib.normalisation(
      opts, contract_lib.TRAIN_SPLIT_STATS, x.shape[-1],
      "the training split's statistics (the FRePo pipeline's)")
  mnist_type = contract_lib.dataset_key(opts.dataset).split(
      "/")[0] in contract_lib.MNIST_TYPE
  zca, zca_from = contract_lib.resolve_zca(
      opts, not mnist_type,
      f"{fmt} default: ZCA except on MNIST-type data ({opts.dataset})")
  contract = contract_lib.Contract(
      channel_order="NHWC", value_range="standardised: (pixel - mean) / std",
      mean=mean, std=std, normalisation_from=norm_from, zca=zca,
      zca_recipe=ZCA_RECIPE[fmt] if zca else None, zca_from=zca_from,
      label_form=("soft targets (learned)" if soft is not None else
                  "classes (one-hot after centring undone)"),
      label_centring=CENTRING[fmt],
      notes=(f"read from {where}",))
  extra = {"checkpoint_step": step} if step is not None else {}
  return contract_lib.build(file, opts, x, labels, contract, soft=soft,
                            class_names=[str(i) for i in range(y.shape[1])],
                            extra=extra)
