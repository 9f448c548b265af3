"""Periodic checkpoints of the outer state, for `--resume`.

Checkpoints hold the whole outer state (learned data, optimiser state, step,
plus whatever the trainer adds) as the flattened leaves of the pytree in one
`.npz` file per step, `workdir/checkpoints/ckpt_<step>.npz`, written
atomically (temporary file + rename), with the tree structure recorded so
that a checkpoint of another configuration is refused with a clear message.
Together with the step-derived PRNG keys and real-batch order, restoring one
and continuing gives the same result as an uninterrupted run.

(Earlier versions used orbax; its import alone kept ~25 MiB resident in
every job, and these states are a few arrays. Directories written by orbax
are not read: resume such a run with the version that started it.)
"""

import os
import re

import jax
import numpy as np

from distill_jax.run import storage

_NAME = re.compile(r"^ckpt_(\d+)\.npz$")
_TREEDEF = "__treedef__"


class Manager:
  """The checkpoints of one run: `directory`, newest `max_to_keep` kept."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = directory
    self.max_to_keep = max_to_keep

  def steps(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(m.group(1)) for m in map(_NAME.match,
                                               os.listdir(self.directory))
                  if m)

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def path(self, step: int) -> str:
    return os.path.join(self.directory, f"ckpt_{step:09d}.npz")


def manager(workdir: str, max_to_keep: int = 2) -> Manager:
  return Manager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                 max_to_keep)


def _host(leaf) -> np.ndarray:
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(
      leaf.dtype, jax.dtypes.prng_key):
    raise TypeError("PRNG key arrays cannot be checkpointed; store "
                    "jax.random.key_data(key) instead.")
  return np.asarray(leaf)


def save(mngr: Manager, step: int, state) -> None:
  """Saves `state` (any pytree of arrays) as checkpoint `step`."""
  if mngr.latest_step() == step:
    return
  leaves, treedef = jax.tree.flatten(state)
  arrays = {f"leaf_{i:05d}": _host(x) for i, x in enumerate(leaves)}
  arrays[_TREEDEF] = np.array(str(treedef))
  storage.atomic_write(mngr.path(step), lambda f: np.savez(f, **arrays))
  for old in mngr.steps()[:-mngr.max_to_keep]:
    try:
      os.remove(mngr.path(old))
    except FileNotFoundError:
      pass


def restore_latest(mngr: Manager, template):
  """Restores the newest checkpoint into the structure of `template`.

  Leaves come back as numpy arrays, or, where the template leaf is a JAX
  array, on that leaf's devices (same sharding).

  Returns:
    (step, state), or (None, template) if there is no checkpoint.

  Raises:
    ValueError: the checkpoint is corrupt or of another configuration.
  """
  step = mngr.latest_step()
  if step is None:
    return None, template
  path = mngr.path(step)

  def fail(why: str):
    return ValueError(
        f"Checkpoint {step} in {mngr.directory} does not match this run's "
        f"configuration or is corrupt ({why}). Use the same flags as the "
        "interrupted run, or a fresh --workdir.")
  leaves, treedef = jax.tree.flatten(template)
  try:
    with np.load(path, allow_pickle=False) as f:
      stored = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/OSError/ValueError: all mean corrupt.
    raise fail(f"{type(e).__name__}: {e}") from e
  if str(stored.pop(_TREEDEF, "")) != str(treedef) or len(stored) != len(
      leaves):
    raise fail("its tree structure differs")
  out = []
  for i, t in enumerate(leaves):
    a = stored[f"leaf_{i:05d}"]
    dtype = t.dtype if isinstance(t, jax.Array) else np.asarray(t).dtype
    if a.shape != tuple(np.shape(t)) or a.dtype != dtype:
      raise fail(f"leaf {i}: {a.dtype}{list(a.shape)} stored, "
                 f"{dtype}{list(np.shape(t))} expected")
    out.append(jax.device_put(a, t.sharding) if isinstance(t, jax.Array)
               else a)
  return step, jax.tree.unflatten(treedef, out)
