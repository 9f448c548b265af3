"""Metrics out beside metrics.jsonl: TensorBoard events and a profiler trace.

Both are options of the host process (`platform.Platform.tensorboard`,
`platform.Platform.profile_steps`; flags `--tensorboard`,
`--profile_steps`), never of what is computed: a run with them gives the
same set as one without.

  * TensorBoard: every record the host loop writes to metrics.jsonl is also
    written as scalars to ``<workdir>/tensorboard/`` (`tensorboardX`, the
    `tensorboard` extra: ``pip install -e ".[tensorboard]"``). Non-finite
    values are skipped, as metrics.jsonl stores them as null.
  * Profiler: `jax.profiler` traces `profile_steps` outer steps, starting
    with the second step of the run (the first runs the compiled program
    once more after compilation), into ``<workdir>/profile/``; open it with
    TensorBoard's profile plugin or Perfetto (``*.trace.json.gz``).
"""

import math
import os

import jax

from distill_jax import platform


class Observer:
  """The optional outputs of one host loop in `workdir`."""

  def __init__(self, workdir: str, start: int, total: int):
    opts = platform.current()
    self._writer = None
    if opts.tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ValueError("--tensorboard needs the tensorboardX package: pip "
                         "install tensorboardX (or the tensorboard extra)."
                         ) from e
      self._writer = tensorboardX.SummaryWriter(
          os.path.join(workdir, "tensorboard"), purge_step=start + 1)
    self._profile_dir = os.path.join(workdir, "profile")
    first = start + 1
    self._trace = (first, min(total, first + opts.profile_steps)) \
        if opts.profile_steps else None
    self._tracing = False

  def before_step(self, step: int) -> None:
    """Called with the number of steps done before running the next one."""
    if self._trace and step == self._trace[0] and not self._tracing:
      jax.profiler.start_trace(self._profile_dir)
      self._tracing = True

  def after_step(self, step: int, state) -> None:
    if self._tracing and step >= self._trace[1]:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self._tracing = False

  def record(self, rec: dict) -> None:
    if self._writer is None:
      return
    for k, v in rec.items():
      if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
        self._writer.add_scalar(k, v, rec["step"])
    self._writer.flush()

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
    if self._writer is not None:
      self._writer.close()
