"""Reading and writing distilled sets (`distilled.npz`) and JSON, atomically.

A distilled set (`distilled_set.DistilledSet`, any method) is one plain
`.npz` (no pickle). Format version 2:

  format           "distill_jax.distilled"
  format_version   2
  images           (N, H, W, C) float32, the model's input space
  labels           (N,) int32, the class each image was distilled for
  class_names      (K,) str, the class names in label order
  mean, std        (C,) float32: pixel = normalised * std + mean
  dataset, method  str: dataset name; "dd", "rat_bptt" or "boost_dd"
  model            JSON: {"arch": ..., its hyper-parameters}
  metadata         JSON: run configuration ("config"), outer steps, ...
  soft_labels      optional, (N, K) float32 learned soft targets
  raw_lr, lrs      optional, (T,) float32 learned per-inner-step learning
                   rates (lr = softplus(raw_lr); `lrs` is for reading only)
  schedule         optional, (T, n) int32: images seen by inner step t
                   (absent: class-balanced subsampling of the whole set)
  block            optional, (N,) int32 Boost-DD block of each image
  zca/matrix       optional, (D, D) float32 ZCA transform, D = H * W * C,
  zca/mean         and (D,) its mean (see `zca`)
  init/<path>      optional, the fixed initial network of fixed-init DD runs

Version 1 (still read) stored every set as DD steps: x (S, n, H, W, C),
labels (S, n), raw_lr/lrs and step_order (S * E,), mean, std, metadata,
init/<path>; RaT-BPTT and Boost-DD sets were one step of all images, marked
by extra/class_index, with extra/soft_labels, extra/block and
extra/zca_matrix, extra/zca_mean. It recorded no class names ("0", "1", ...
are used) and RaT-BPTT sets' lrs were learned only if the run's config says
learn_lr.

`save_distilled_set` is the one writer and `load_distilled_set` the one
reader; the reader validates everything and says what is wrong with a bad
file. `atomic_write` (also used by checkpoints) writes a temporary file,
fsyncs it, renames it over the target and fsyncs the folder; on a URL path
(gs://, s3://: `etils.epath`, imported only then) it writes the object in
one upload, which such stores make visible whole or not at all. In a
multi-host run only process 0 writes (`platform.distributed.is_writer`);
`atomic_write` does nothing in the others.
"""

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from distill_jax import distilled_set as set_lib
from distill_jax.platform import distributed
from distill_jax.data import zca as zca_lib
from distill_jax.distilled_set import DistilledSet

FORMAT = "distill_jax.distilled"
FORMAT_VERSION = set_lib.FORMAT_VERSION
_REQUIRED = {
    1: ("x", "labels", "raw_lr", "lrs", "step_order", "mean", "std",
        "metadata"),
    2: ("images", "labels", "class_names", "mean", "std", "dataset",
        "method", "model", "metadata"),
}


class DistilledFileError(ValueError):
  """A distilled-set file is missing, foreign, truncated or inconsistent."""


def atomic_write(path: str, write_fn, mode: str = "wb") -> None:
  """Writes `path` durably: temporary file, fsync, rename, fsync folder.

  A reader sees the old file or the whole new one, also after a crash.

  Args:
    path: destination (a local path, or a URL such as gs://bucket/file).
    write_fn: called with the open temporary file.
    mode: "wb" or "w".
  """
  if not distributed.is_writer():
    return
  if is_url(path):
    target = epath(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open(mode) as f:
      write_fn(f)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_")
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


def is_url(path) -> bool:
  """True for gs://, s3://, ... paths (read and written by `etils.epath`)."""
  return "://" in str(path)


def epath(path):
  """`etils.epath.Path(path)` (imported on first use)."""
  from etils import epath as epath_lib  # pylint: disable=g-import-not-at-top
  return epath_lib.Path(path)


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True),
               mode="w")


def _flatten(params, prefix="init") -> dict:
  out = {}
  for k, v in params.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}/{k}"))
    else:
      out[f"{prefix}/{k}"] = np.asarray(v)
  return out


def _unflatten(flat: dict, prefix="init") -> dict:
  out: dict = {}
  for key, value in flat.items():
    parts = key.split("/")[1:]
    node = out
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return out


def save_distilled_set(path: str, distilled: DistilledSet) -> None:
  """Validates `distilled` and writes it to `path` (atomically, version 2).

  Raises:
    ValueError: the set is inconsistent or not finite (nothing is written).
  """
  try:
    distilled.validate()
  except ValueError as e:
    raise ValueError(f"Not writing {path}: {e}") from e
  d = distilled
  arrays = {
      "format": np.array(FORMAT),
      "format_version": np.array(FORMAT_VERSION, np.int32),
      "images": np.asarray(d.images, np.float32),
      "labels": np.asarray(d.labels, np.int32),
      "class_names": np.array(d.class_names, dtype=str),
      "mean": np.asarray(d.mean, np.float32),
      "std": np.asarray(d.std, np.float32),
      "dataset": np.array(d.dataset),
      "method": np.array(d.method),
      "model": np.array(json.dumps(d.model, sort_keys=True)),
      "metadata": np.array(json.dumps(d.metadata, sort_keys=True)),
  }
  if d.soft_labels is not None:
    arrays["soft_labels"] = np.asarray(d.soft_labels, np.float32)
  if d.raw_lr is not None:
    arrays["raw_lr"] = np.asarray(d.raw_lr, np.float32)
    arrays["lrs"] = d.lrs
  if d.schedule is not None:
    arrays["schedule"] = np.asarray(d.schedule, np.int32)
  if d.block is not None:
    arrays["block"] = np.asarray(d.block, np.int32)
  if d.zca is not None:
    arrays["zca/matrix"] = np.asarray(d.zca.matrix, np.float32)
    arrays["zca/mean"] = np.asarray(d.zca.mean, np.float32)
  if d.init_params is not None:
    arrays.update(_flatten(d.init_params))
  atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_npz(path: str) -> dict:
  if not os.path.exists(path):
    raise DistilledFileError(
        f"{path}: no such file. Distilled sets are written as "
        "<workdir>/distilled.npz by the experiments in experiments/.")
  def unreadable(why: str) -> DistilledFileError:
    return DistilledFileError(
        f"{path}: not a readable .npz archive (truncated or corrupt?){why}. "
        "Re-run the distillation or restore the file.")
  if not zipfile.is_zipfile(path):
    raise unreadable("")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise unreadable(f": {e}") from e
  except ValueError as e:
    raise DistilledFileError(
        f"{path}: contains pickled objects, which distill_jax never writes "
        f"and will not load: {e}") from e


def _json(files: dict, key: str, path: str) -> dict:
  try:
    value = json.loads(str(files[key]))
  except json.JSONDecodeError as e:
    raise DistilledFileError(f"{path}: {key} is not JSON: {e}") from e
  if not isinstance(value, dict):
    raise DistilledFileError(f"{path}: {key} is not a JSON object.")
  return value


def _init_params(files: dict) -> dict | None:
  init = {k: v for k, v in files.items() if k.startswith("init/")}
  return _unflatten(init) if init else None


def _from_v2(files: dict, path: str) -> DistilledSet:
  zca = None
  if "zca/matrix" in files or "zca/mean" in files:
    if not ("zca/matrix" in files and "zca/mean" in files):
      raise DistilledFileError(f"{path}: holds only one of zca/matrix and "
                               "zca/mean; restore the file or re-run.")
    zca = zca_lib.Zca(matrix=files["zca/matrix"], mean=files["zca/mean"])
  if ("raw_lr" in files) != ("lrs" in files) or (
      "raw_lr" in files and files["raw_lr"].shape != files["lrs"].shape):
    raise DistilledFileError(f"{path}: raw_lr and lrs must be stored "
                             "together, with the same shape.")
  if files["class_names"].ndim != 1:
    raise DistilledFileError(f"{path}: class_names has shape "
                             f"{files['class_names'].shape}, expected (K,).")
  return DistilledSet(
      images=files["images"], labels=files["labels"],
      soft_labels=files.get("soft_labels"), raw_lr=files.get("raw_lr"),
      schedule=files.get("schedule"), block=files.get("block"),
      mean=files["mean"], std=files["std"], zca=zca,
      init_params=_init_params(files),
      class_names=tuple(str(c) for c in files["class_names"]),
      dataset=str(files["dataset"]), method=str(files["method"]),
      model=_json(files, "model", path),
      metadata=_json(files, "metadata", path), format_version=2)


def _from_v1(files: dict, path: str) -> DistilledSet:
  """A version-1 file (DD steps; RaT-BPTT/Boost-DD as one step)."""
  x, labels, lrs = files["x"], files["labels"], files["lrs"]
  if x.ndim != 5:
    raise DistilledFileError(
        f"{path}: x has shape {x.shape}, expected (steps, n, H, W, C).")
  if labels.shape[:2] != x.shape[:2]:
    raise DistilledFileError(
        f"{path}: labels shape {labels.shape} does not match x {x.shape}.")
  order = files["step_order"]
  if (lrs.shape != files["raw_lr"].shape or order.shape != lrs.shape or
      lrs.size % x.shape[0] or (order.size and (
          order.max() >= x.shape[0] or order.min() < 0))):
    raise DistilledFileError(
        f"{path}: {lrs.size} learning rates / step order {order.shape} do "
        f"not fit {x.shape[0]} distilled steps.")
  meta = _json(files, "metadata", path)
  extra = {k[len("extra/"):]: v for k, v in files.items()
           if k.startswith("extra/")}
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(lrs))):
    raise DistilledFileError(f"{path}: contains NaN or infinite values "
                             "(a diverged run?); re-run the distillation.")
  zca = None
  if "zca_matrix" in extra or "zca_mean" in extra:
    try:
      zca = zca_lib.from_extra(extra)
    except ValueError as e:
      raise DistilledFileError(f"{path}: {e}") from e
  s, n = x.shape[:2]
  k = int(meta.get("num_classes") or (labels.shape[-1] if labels.ndim == 3
                                      else labels.max(initial=0) + 1))
  common = dict(
      mean=files["mean"], std=files["std"], zca=zca,
      class_names=tuple(str(i) for i in range(k)),  # v1 kept no names.
      dataset=str(meta.pop("dataset", "")),
      model=set_lib.model_spec({"arch": meta.get("arch"),
                                **meta.get("config", {})}))
  for key in ("arch", "num_classes", "image_shape", "layout"):
    meta.pop(key, None)
  if "class_index" not in extra:  # a DD set.
    schedule = (order.astype(np.int64)[:, None] * n +
                np.arange(n)[None]).astype(np.int32)
    soft = (labels.reshape(s * n, -1).astype(np.float32)
            if labels.ndim == 3 else None)  # classes: their argmax.
    return DistilledSet(
        images=x.reshape(s * n, *x.shape[2:]),
        labels=(labels.reshape(s * n) if soft is None else
                np.argmax(soft, -1).astype(np.int32)),
        soft_labels=soft, raw_lr=files["raw_lr"], schedule=schedule,
        block=None, init_params=_init_params(files), method="dd",
        metadata=meta,
        format_version=1, **common)
  cls_idx = extra["class_index"]
  if s != 1 or cls_idx.shape != (n,) or not np.array_equal(
      cls_idx, labels.reshape(-1)):
    raise DistilledFileError(
        f"{path}: extra/class_index {cls_idx.shape} does not match the "
        f"labels {labels.shape} of a one-step RaT-BPTT file.")
  soft = extra.get("soft_labels")
  if soft is not None and soft.shape != (n, k):
    raise DistilledFileError(f"{path}: extra/soft_labels has shape "
                             f"{soft.shape}, expected ({n}, {k}).")
  # Version 1 wrote "rat_bptt" or "boost_dd (our reading)".
  method = ("boost_dd" if str(meta.pop("method", "")).startswith("boost_dd")
            else "rat_bptt")
  learned_lr = bool(meta.get("config", {}).get("learn_lr", False))
  meta.pop("raw_lr_meaning", None)
  return DistilledSet(
      images=x[0], labels=cls_idx.astype(np.int32), soft_labels=soft,
      raw_lr=files["raw_lr"] if learned_lr else None,
      schedule=None, block=extra.get("block"), init_params=None,
      method=method, metadata=meta,
      format_version=1, **common)


def load_distilled_set(path: str) -> DistilledSet:
  """Loads and validates a distilled set of format version 1 or 2.

  Args:
    path: the file.

  Returns:
    A `DistilledSet` (`format_version` says which format it was read from).

  Raises:
    DistilledFileError: the file is missing, not an npz, not a distill_jax
      file, of an unknown version, truncated or internally inconsistent.
  """
  files = _read_npz(path)
  if "format" not in files or str(files["format"]) != FORMAT:
    raise DistilledFileError(
        f"{path}: not a distill_jax distilled set (format marker "
        f"{str(files.get('format', 'absent'))!r}, keys {sorted(files)[:8]}).")
  if "format_version" not in files:
    raise DistilledFileError(f"{path}: missing fields ['format_version'].")
  version = int(files["format_version"])
  if version > FORMAT_VERSION:
    raise DistilledFileError(
        f"{path}: format version {version} is newer than this distill_jax "
        f"({FORMAT_VERSION}); upgrade distill_jax.")
  if version not in _REQUIRED:
    raise DistilledFileError(
        f"{path}: unknown format version {version}; this distill_jax reads "
        f"versions {sorted(_REQUIRED)}.")
  missing = [k for k in _REQUIRED[version] if k not in files]
  if missing:
    raise DistilledFileError(
        f"{path}: missing fields {missing} (format version {version}); "
        "the file is damaged: re-run the distillation or restore it.")
  out = (_from_v1 if version == 1 else _from_v2)(files, path)
  try:
    return out.validate()
  except ValueError as e:
    raise DistilledFileError(f"{path}: {e}") from e


POOL_FORMAT = "distill_jax.pool"
POOL_FORMAT_VERSION = 1


def save_pool(path: str, params_batch, metadata: dict) -> None:
  """Saves a stack of networks (leading axis P) as a pretrained pool."""
  arrays = {"format": np.array(POOL_FORMAT),
            "format_version": np.array(POOL_FORMAT_VERSION, np.int32),
            "metadata": np.array(json.dumps(metadata, sort_keys=True))}
  arrays.update(_flatten(params_batch, prefix="pool"))
  atomic_write(path, lambda f: np.savez(f, **arrays))


def load_pool(path: str) -> tuple[dict, dict]:
  """Loads a pool written by `save_pool`: (stacked params, metadata)."""
  if not os.path.exists(path):
    raise DistilledFileError(
        f"{path}: no such pretrained pool. Create one with "
        "`python -m experiments.pretrain --workdir=DIR` (writes DIR/pool.npz).")
  try:
    with np.load(path, allow_pickle=False) as z:
      files = {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
    raise DistilledFileError(f"{path}: not a readable pool .npz: {e}") from e
  if str(files.get("format", "")) != POOL_FORMAT:
    raise DistilledFileError(
        f"{path}: not a distill_jax pretrained pool (no format marker "
        f"{POOL_FORMAT!r}).")
  params = _unflatten({k: v for k, v in files.items()
                       if k.startswith("pool/")})
  return params, json.loads(str(files["metadata"]))
