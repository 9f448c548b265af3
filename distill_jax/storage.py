"""Reading and writing distilled sets (`distilled.npz`) and JSON, atomically.

The file is a plain `.npz` (no pickle) with a format marker and version:

  format           "distill_jax.distilled"
  format_version   1
  x                (S, n, H, W, C) float32, images in normalised space
  labels           (S, n) int32, or (S, n, classes) float32 soft labels
  raw_lr, lrs      (S*E,) float32, learned learning rates (lr = softplus(raw))
  step_order       (S*E,) int32, distilled batch used at each inner step
  mean, std        (C,) float32, the normalisation (pixel = x * std + mean)
  metadata         JSON string: dataset, arch, config, init mode, ...
  init/<path>      optional: the fixed initial network of fixed-init runs
  extra/<name>     optional method-specific arrays (e.g. a ZCA transform)

`load_distilled` validates all of it and says what is wrong with a bad file.
"""

import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import numpy as np

FORMAT = "distill_jax.distilled"
FORMAT_VERSION = 1
_REQUIRED = ("format", "format_version", "x", "labels", "raw_lr", "lrs",
             "step_order", "mean", "std", "metadata")


class DistilledFileError(ValueError):
  """A distilled-set file is missing, foreign, truncated or inconsistent."""


class Distilled(NamedTuple):
  """A loaded distilled set (numpy arrays)."""
  x: np.ndarray
  labels: np.ndarray
  raw_lr: np.ndarray
  lrs: np.ndarray
  step_order: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  metadata: dict
  init_params: dict | None
  extra: dict

  @property
  def steps(self) -> int:
    return self.x.shape[0]

  @property
  def epochs(self) -> int:
    return len(self.lrs) // self.x.shape[0]

  def learned(self) -> dict:
    """The learned pytree as used by `meta` and `evaluate`."""
    return {"x": self.x, "raw_lr": self.raw_lr}


def atomic_write(path: str, write_fn, mode: str = "wb") -> None:
  """Writes via a temporary file in the same directory, then renames."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_")
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


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


def save_distilled(path: str, learned, labels, *, steps: int, epochs: int,
                   mean, std, metadata: dict, init_params=None,
                   extra: dict | None = None) -> None:
  """Saves a distilled set to `path` (atomically).

  Args:
    path: destination `.npz`.
    learned: {"x": (S, n, H, W, C), "raw_lr": (S*E,)}.
    labels: (S, n) integer labels.
    steps: S.
    epochs: E.
    mean: per-channel normalisation mean.
    std: per-channel normalisation std.
    metadata: JSON-serialisable description (dataset, arch, config ...).
    init_params: the fixed initial network (fixed-init modes), or None.
    extra: optional name -> array stored as `extra/<name>`.
  """
  raw = np.asarray(learned["raw_lr"], np.float32)
  arrays = {
      "format": np.array(FORMAT),
      "format_version": np.array(FORMAT_VERSION, np.int32),
      "x": np.asarray(learned["x"], np.float32),
      "labels": np.asarray(labels),
      "raw_lr": raw,
      "lrs": np.logaddexp(raw, 0.0).astype(np.float32),
      "step_order": np.tile(np.arange(steps), epochs).astype(np.int32),
      "mean": np.asarray(mean, np.float32),
      "std": np.asarray(std, np.float32),
      "metadata": np.array(json.dumps(metadata, sort_keys=True)),
  }
  if init_params is not None:
    arrays.update(_flatten(init_params))
  for name, value in (extra or {}).items():
    arrays[f"extra/{name}"] = np.asarray(value)
  atomic_write(path, lambda f: np.savez(f, **arrays))


def load_distilled(path: str) -> Distilled:
  """Loads and validates a `distilled.npz` written by `save_distilled`.

  Args:
    path: the file.

  Returns:
    A `Distilled` tuple.

  Raises:
    DistilledFileError: the file is missing, not an npz, not a distill_jax
      file, of an unknown version, truncated or internally inconsistent.
  """
  if not os.path.exists(path):
    raise DistilledFileError(
        f"{path}: no such file. Distilled sets are written as "
        "<workdir>/distilled.npz by the experiments in experiments/.")
  try:
    with np.load(path, allow_pickle=False) as z:
      files = {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise DistilledFileError(
        f"{path}: not a readable .npz archive (truncated or corrupt?): {e}. "
        "Re-run the distillation or restore the file.") from e
  except ValueError as e:
    raise DistilledFileError(
        f"{path}: contains pickled objects, which distill_jax never writes "
        f"and will not load: {e}") from e
  missing = [k for k in _REQUIRED if k not in files]
  if "format" not in files or str(files["format"]) != FORMAT:
    raise DistilledFileError(
        f"{path}: not a distill_jax distilled set (format marker "
        f"{str(files.get('format', 'absent'))!r}, keys {sorted(files)[:8]}).")
  if missing:
    raise DistilledFileError(f"{path}: missing fields {missing}.")
  version = int(files["format_version"])
  if version > FORMAT_VERSION:
    raise DistilledFileError(
        f"{path}: format version {version} is newer than this distill_jax "
        f"({FORMAT_VERSION}); upgrade distill_jax.")
  x, labels, lrs = files["x"], files["labels"], files["lrs"]
  if x.ndim != 5:
    raise DistilledFileError(
        f"{path}: x has shape {x.shape}, expected (steps, n, H, W, C).")
  if labels.shape[:2] != x.shape[:2]:
    raise DistilledFileError(
        f"{path}: labels shape {labels.shape} does not match x {x.shape}.")
  order = files["step_order"]
  if (lrs.shape != files["raw_lr"].shape or order.shape != lrs.shape or
      lrs.size % x.shape[0] or (order.size and order.max() >= x.shape[0])):
    raise DistilledFileError(
        f"{path}: {lrs.size} learning rates / step order {order.shape} do "
        f"not fit {x.shape[0]} distilled steps.")
  if files["mean"].shape != (x.shape[-1],) or files["std"].shape != (
      x.shape[-1],):
    raise DistilledFileError(
        f"{path}: mean/std must have one value per channel ({x.shape[-1]}).")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(lrs))):
    raise DistilledFileError(f"{path}: contains NaN or infinite values.")
  try:
    metadata = json.loads(str(files["metadata"]))
  except json.JSONDecodeError as e:
    raise DistilledFileError(f"{path}: metadata is not JSON: {e}") from e
  init = {k: v for k, v in files.items() if k.startswith("init/")}
  return Distilled(x=x, labels=labels, raw_lr=files["raw_lr"], lrs=lrs,
                   step_order=order, mean=files["mean"], std=files["std"],
                   metadata=metadata,
                   init_params=_unflatten(init) if init else None,
                   extra={k[len("extra/"):]: v for k, v in files.items()
                          if k.startswith("extra/")})


POOL_FORMAT = "distill_jax.pool"


def save_pool(path: str, params_batch, metadata: dict) -> None:
  """Saves a stack of networks (leading axis P) as a pretrained pool."""
  arrays = {"format": np.array(POOL_FORMAT),
            "format_version": np.array(FORMAT_VERSION, np.int32),
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
