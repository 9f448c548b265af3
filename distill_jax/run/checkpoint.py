"""Periodic checkpoints of the outer state, for `--resume`.

Checkpoints hold the whole outer state (learned data, optimiser state, step,
plus whatever the trainer adds) as the flattened leaves of the pytree in one
`.npz` file per step, `workdir/checkpoints/ckpt_<step>.npz` (or under
`Platform.checkpoint_dir`, `--checkpoint_dir`), written
atomically (temporary file + rename), with the tree structure recorded so
that a checkpoint of another configuration is refused with a clear message.
Together with the step-derived PRNG keys and real-batch order, restoring one
and continuing gives the same result as an uninterrupted run.

The file holds whole (global) arrays, not device shards, so a checkpoint
written on N devices or hosts restores on M: `save` gathers every leaf to
the host (`distributed.to_host`: a cross-host gather for leaves sharded
over several processes, which every process joins) and process 0 writes
the file; `restore_latest` reads it (in a multi-host run process 0 reads
and broadcasts it, so only process 0 needs to see the workdir) and puts
each leaf where the current run keeps it: an uncommitted array on the
default device when the template leaf is uncommitted (a fresh run's
state, which the next jitted step places on the current mesh), else the
template's sharding, each process filling its own devices from the host
copy (`distributed.place`). The states are a few MiB (learned images,
optimiser moments), so one gathered file costs little; a sharded format
(orbax) pays off only for states too big for one host. The directory may
be any `etils.epath` path, gs:// included (`storage.is_url`).

(Earlier versions used orbax; its import alone kept ~25 MiB resident in
every job, and these states are a few arrays. Directories written by orbax
are not read: resume such a run with the version that started it. The
npz files of single-host versions are this format: they still load.)
"""

import io
import os
import re

import jax
import numpy as np

from distill_jax.platform import distributed
from distill_jax.run import storage

_NAME = re.compile(r"^ckpt_(\d+)\.npz$")
_TREEDEF = "__treedef__"


class Manager:
  """The checkpoints of one run: `directory`, newest `max_to_keep` kept."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = directory
    self.max_to_keep = max_to_keep

  def steps(self) -> list[int]:
    if storage.is_url(self.directory):
      d = storage.epath(self.directory)
      names = [p.name for p in d.iterdir()] if d.is_dir() else []
    elif os.path.isdir(self.directory):
      names = os.listdir(self.directory)
    else:
      return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def path(self, step: int) -> str:
    return f"{self.directory.rstrip('/')}/ckpt_{step:09d}.npz"

  def remove(self, step: int) -> None:
    try:
      if storage.is_url(self.directory):
        storage.epath(self.path(step)).unlink()
      else:
        os.remove(self.path(step))
    except FileNotFoundError:
      pass

  def read(self, step: int) -> dict:
    """The arrays of checkpoint `step` (raises on a missing/corrupt file)."""
    path = self.path(step)
    source = (io.BytesIO(storage.epath(path).read_bytes())
              if storage.is_url(path) else path)
    with np.load(source, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}


def manager(workdir: str, max_to_keep: int = 2) -> Manager:
  """The run's checkpoints: `Platform.checkpoint_dir`, else
  <workdir>/checkpoints."""
  from distill_jax import platform  # pylint: disable=g-import-not-at-top
  chosen = platform.current().checkpoint_dir
  if chosen:
    return Manager(chosen if storage.is_url(chosen) else
                   os.path.abspath(chosen), max_to_keep)
  if storage.is_url(workdir):
    return Manager(f"{str(workdir).rstrip('/')}/checkpoints", max_to_keep)
  return Manager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                 max_to_keep)


def _host(leaf) -> np.ndarray:
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
      leaf.dtype, jax.dtypes.prng_key):
    raise TypeError("PRNG key arrays cannot be checkpointed; store "
                    "jax.random.key_data(key) instead.")
  return distributed.to_host(leaf)


def save(mngr: Manager, step: int, state) -> None:
  """Saves `state` (any pytree of arrays) as checkpoint `step`.

  Every process of a multi-host run calls it (leaves sharded across hosts
  are gathered); only process 0 writes.
  """
  leaves, treedef = jax.tree.flatten(state)
  arrays = {f"leaf_{i:05d}": _host(x) for i, x in enumerate(leaves)}
  if not distributed.is_writer() or mngr.latest_step() == step:
    return
  arrays[_TREEDEF] = np.array(str(treedef))
  storage.atomic_write(mngr.path(step), lambda f: np.savez(f, **arrays))
  for old in mngr.steps()[:-mngr.max_to_keep]:
    mngr.remove(old)


def _place(a: np.ndarray, template: jax.Array) -> jax.Array:
  """`a` where the run keeps `template` (see the module docstring)."""
  if not getattr(template, "committed", True):
    return jax.device_put(a)
  return distributed.place(a, template.sharding)


def restore_latest(mngr: Manager, template):
  """Restores the newest checkpoint into the structure of `template`.

  Leaves come back as numpy arrays, or, where the template leaf is a JAX
  array, on that leaf's devices (same sharding; uncommitted if it is), on
  however many devices and hosts the current run has. In a multi-host run
  process 0 reads the file and sends it to the others (`_from_writer`), so
  only process 0 needs to see the workdir; every process must call this.

  Returns:
    (step, state), or (None, template) if there is no checkpoint.

  Raises:
    ValueError: the checkpoint is corrupt or of another configuration.
  """
  leaves, treedef = jax.tree.flatten(template)
  if distributed.is_distributed():
    step, arrays = _from_writer(mngr, leaves, treedef)
  else:
    step, arrays = _read(mngr, leaves, treedef)
  if step is None:
    return None, template
  out = [_place(a, t) if isinstance(t, jax.Array) else a
         for a, t in zip(arrays, leaves)]
  return step, jax.tree.unflatten(treedef, out)


def _dtype(leaf) -> np.dtype:
  return np.dtype(leaf.dtype if isinstance(leaf, jax.Array) else
                  np.asarray(leaf).dtype)


def _read(mngr: Manager, leaves, treedef):
  """(step, host arrays checked against the template leaves) or (None,
  None); raises ValueError for a corrupt or foreign checkpoint."""
  step = mngr.latest_step()
  if step is None:
    return None, None

  def fail(why: str):
    return ValueError(
        f"Checkpoint {step} in {mngr.directory} does not match this run's "
        f"configuration or is corrupt ({why}). Use the same flags as the "
        "interrupted run, or a fresh --workdir.")
  try:
    stored = mngr.read(step)
  except Exception as e:  # zipfile/OSError/ValueError: all mean corrupt.
    raise fail(f"{type(e).__name__}: {e}") from e
  if str(stored.pop(_TREEDEF, "")) != str(treedef) or len(stored) != len(
      leaves):
    raise fail("its tree structure differs")
  out = []
  for i, t in enumerate(leaves):
    a = stored[f"leaf_{i:05d}"]
    if a.shape != tuple(np.shape(t)) or a.dtype != _dtype(t):
      raise fail(f"leaf {i}: {a.dtype}{list(a.shape)} stored, "
                 f"{_dtype(t)}{list(np.shape(t))} expected")
    out.append(a)
  return step, out


def _from_writer(mngr: Manager, leaves, treedef):
  """`_read` on process 0, sent to every process: a status, then the
  leaves' bytes in one buffer (bytes, so float64/int64 leaves arrive
  exactly whatever `jax_enable_x64` says)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  error, step, arrays = None, None, None
  if distributed.is_writer():
    try:
      step, arrays = _read(mngr, leaves, treedef)
    except ValueError as e:
      error = e
  status = -2 if error else (-1 if step is None else step)
  status = int(multihost_utils.broadcast_one_to_all(np.int32(status)))
  if status == -2:
    raise error or ValueError(
        f"process 0 refused the checkpoint in {mngr.directory} (see its "
        "error); resume with the interrupted run's flags or a fresh "
        "--workdir.")
  if status == -1:
    return None, None
  sizes = [int(np.prod(np.shape(t), dtype=np.int64)) * _dtype(t).itemsize
           for t in leaves]
  buf = (np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                         for a in arrays]) if arrays is not None else
         np.zeros(sum(sizes), np.uint8))
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  out, offset = [], 0
  for t, size in zip(leaves, sizes):
    out.append(buf[offset:offset + size].view(_dtype(t)).reshape(
        np.shape(t)).copy())
    offset += size
  return status, out
