"""Periodic checkpoints of the outer state (orbax), for `--resume`.

Checkpoints hold the whole `OuterState` (learned data, optimiser state, step).
Together with the step-derived PRNG keys and real-batch order, restoring one
and continuing gives the same result as an uninterrupted run.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def manager(workdir: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, enable_async_checkpointing=False))


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves `state` (any pytree of arrays) as checkpoint `step`."""
  if mngr.latest_step() == step:
    return
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, template):
  """Restores the newest checkpoint into the structure of `template`.

  Returns:
    (step, state), or (None, template) if there is no checkpoint.
  """
  step = mngr.latest_step()
  if step is None:
    return None, template
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
      if not hasattr(x, "sharding") else
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
  try:
    state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types; all mean the same here.
    raise ValueError(
        f"Checkpoint {step} in {mngr.directory} does not match this run's "
        f"configuration or is corrupt ({type(e).__name__}: {e}). Use the same "
        "flags as the interrupted run, or a fresh --workdir.") from e
  return step, state
