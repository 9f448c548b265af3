"""Schedules of the decoupled recover: lr, CDA crop curriculum, DELT rounds.

Iterations t are 0-based global recover iterations (the scripts'
`for iteration in range(iterations)`). The lr and CDA functions are jnp
code and accept traced t; the DELT partition and init order are host-side
numpy (static shapes).

  * `cosine_lr`: SRe2L `lr_cosine_policy(lr, 0, T)`, 1/2 lr (1 + cos(pi t/T))
    (METHODS.md C.0).
  * `min_crop`: CDA's scheduled RandomResizedCrop minimum scale (C.2).
  * DELT EarlyLate rounds (`round_sizes`, `start_rounds`,
    `image_iterations`, `active_mask`, `active_indices`) from
    `recover/recover.py::get_round_imgs_indx` (C.5).
  * DELT real-image initialisation order `init_order` ("medium", "top",
    "min") from `data_selection.py` (C.5).
"""

import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Scalar = Union[float, int, Array]
CROP_FLOOR = 0.08
MODES = ("step", "linear", "cosine")
CRITERIA = ("medium", "top", "min")


def cosine_lr(lr: Scalar, t: Scalar, total: Scalar) -> Array:
  """1/2 lr (1 + cos(pi t / total)): from lr at t = 0 towards 0, no warm-up.

  SRe2L/CDA/DELT recover (`lr_cosine_policy(lr, 0, iterations)`,
  METHODS.md C.0); DELT evaluates it at the GLOBAL iteration (C.5).
  """
  t = jnp.asarray(t, jnp.float32)
  return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * t / total))


def min_crop(t: Scalar, total: int, milestone: Scalar = 1.0,
             mode: str = "cosine", floor: Scalar = CROP_FLOOR,
             max_crop: Scalar = 1.0) -> Array:
  """CDA's RandomResizedCrop minimum scale at iteration t (METHODS.md C.2).

  With m = milestone and T = total, for t < m T:
    step:   max_crop;
    linear: floor + (max_crop - floor) (1 - t / (m T));
    cosine: floor + (max_crop - floor) (1 + cos(pi t / (m T))) / 2;
  and floor for t >= m T. The code (`recover_cda_*.py`, DELT
  `recover.py`) hard-codes floor 0.08 and max_crop 1.0; C.7 suggests
  floor 0.25 at 28 px. milestone = 1 (the scripts) spans the whole run;
  milestone = 0 (the flag default) makes `t < 0` false for every t, so the
  scale is `floor` from the first iteration: plain SRe2L (C.2, C.6 item 6).
  The crop is RRC(scale=(min_crop(t), max_crop)).

  Args:
    t: 0-based iteration (may be traced).
    total: T, the number of recover iterations.
    milestone: m in [0, 1].
    mode: "step", "linear" or "cosine" (the CDA default).
    floor: the scale after the curriculum (0.08).
    max_crop: the scale at t = 0 (1.0).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  t = jnp.asarray(t, jnp.float32)
  end = jnp.asarray(milestone, jnp.float32) * total
  safe_end = jnp.where(end > 0, end, 1.0)
  floor = jnp.asarray(floor, jnp.float32)
  if mode == "step":
    early = jnp.asarray(max_crop, jnp.float32) + 0 * t
  elif mode == "linear":
    early = floor + (max_crop - floor) * (1.0 - t / safe_end)
  else:
    early = floor + (max_crop - floor) * (1.0 + jnp.cos(
        jnp.pi * t / safe_end)) / 2.0
  return jnp.where(t < end, early, floor)


# ------------------------------------------------------------ DELT rounds.


def num_rounds(iterations: int, round_iterations: int) -> int:
  """R = iterations // round_iterations (4000 / 500 = 8, METHODS.md C.5)."""
  if round_iterations <= 0 or iterations % round_iterations:
    raise ValueError(f"iterations {iterations} must be a positive multiple "
                     f"of round_iterations {round_iterations}.")
  return iterations // round_iterations


def round_sizes(ipc: int, rounds: int) -> tuple[int, ...]:
  """Images per class starting in each round: floor(ipc / R), +1 for the
  first ipc mod R rounds ([7,7,6,6,6,6,6,6] for 50 over 8; [2,2,1,...,1]
  for 10 over 8; METHODS.md C.5). With ipc < R the last rounds get 0."""
  if ipc < 1 or rounds < 1:
    raise ValueError(f"need ipc >= 1 and rounds >= 1, got {ipc}, {rounds}.")
  return tuple(ipc // rounds + (1 if r < ipc % rounds else 0)
               for r in range(rounds))


def start_rounds(ipc: int, rounds: int) -> np.ndarray:
  """(ipc,) int: the round in which within-class image i starts.

  The first round r with i < c_r, c_r = sum_{r' <= r} n_{r'} (C.5); the
  image then stays active to the end.
  """
  bounds = np.cumsum(round_sizes(ipc, rounds))
  return np.searchsorted(bounds, np.arange(ipc), side="right").astype(
      np.int32)


def group_iterations(rounds: int, round_iterations: int) -> tuple[int, ...]:
  """Iterations of an image starting in round r: (R - r) round_iterations
  (4000, 3500, ..., 500 for 8 x 500)."""
  return tuple((rounds - r) * round_iterations for r in range(rounds))


def image_iterations(ipc: int, rounds: int,
                     round_iterations: int) -> np.ndarray:
  """(ipc,) int: iterations each within-class image is optimised."""
  return ((rounds - start_rounds(ipc, rounds)) * round_iterations).astype(
      np.int64)


def total_image_iterations(ipc: int, rounds: int, round_iterations: int,
                           num_classes: int = 1) -> int:
  """Sum of `image_iterations` over a class, times num_classes.

  Per class: 115,500 for IPC 50 and 25,500 for IPC 10 with 8 x 500
  (vs 200,000 and 40,000 without EarlyLate; METHODS.md C.5).
  """
  return int(image_iterations(ipc, rounds, round_iterations).sum()
             ) * num_classes


def active_mask(t: Scalar, ipc_index: Union[Sequence[int], np.ndarray],
                ipc: int, rounds: int, round_iterations: int) -> Array:
  """Which images are optimised at global iteration t (bool, like ipc_index).

  ipc_index[b] is the within-class index of batch image b (0 = the first
  image of the init order, which gets the most iterations). Image b is
  active iff t >= start_round * round_iterations, i.e. from the start of
  its round (`round = t // round_iterations`) to the end (C.5). t may be
  traced.

  DELT forwards only the active subset (its BN moments and CE use only
  those images) while Adam runs on the whole tensor: inactive images get
  zero gradient and keep zero Adam state. With static shapes, slice with
  `active_indices(round, ...)` (one program per round) rather than
  masking the moments.
  """
  idx = np.asarray(ipc_index)
  if idx.size and (idx.min() < 0 or idx.max() >= ipc):
    raise ValueError(f"ipc_index must lie in [0, {ipc}).")
  start_t = jnp.asarray(start_rounds(ipc, rounds)[idx] * round_iterations)
  return jnp.asarray(t) >= start_t


def active_indices(round_index: int,
                   ipc_index: Union[Sequence[int], np.ndarray],
                   ipc: int, rounds: int) -> np.ndarray:
  """Batch positions active in round `round_index`, ascending (static).

  DELT's `slicing_list[round]` for a class-grouped batch (C.5).
  """
  idx = np.asarray(ipc_index)
  return np.nonzero(start_rounds(ipc, rounds)[idx] <= round_index)[0]


# -------------------------------------------------------- DELT init order.


def init_order(scores: Union[Sequence[float], np.ndarray, Array], ipc: int,
               criterion: str = "medium") -> np.ndarray:
  """Indices (into `scores`) of the ipc real images DELT initialises from.

  `scores` are one class's teacher p(true class) (C.5 step 1). The order
  returned is the within-class order of the synthetic set (DELT writes
  `{k:03}_name`, loaded sorted), so entry 0 starts in round 0.

    medium (default): sort ascending; mid = ceil(n / 2); take sorted
      positions mid + int(s (k + 1) / 2) with s = -1, +1, -1, ... for
      k = 0, 1, 2, ...: mid, mid + 1, mid - 1, mid + 2, mid - 2, ...
      (`store_medium`, C.5 step 3);
    top: the ipc highest scores, highest first (easiest, `store_top`);
    min: the ipc lowest scores, lowest first (hardest, `store_min`).

  Ties are broken by the original index (stable sorts; pandas'
  single-column sort in the code is not stable).

  Raises:
    ValueError: unknown criterion, or ipc exceeds what the criterion can
      take from n scores (the code would fail with an IndexError).
  """
  s = np.asarray(scores, np.float64).reshape(-1)
  n = s.shape[0]
  if criterion not in CRITERIA:
    raise ValueError(f"criterion must be one of {CRITERIA}, got "
                     f"{criterion!r}.")
  if not 1 <= ipc <= n:
    raise ValueError(f"cannot select {ipc} of {n} images.")
  asc = np.argsort(s, kind="stable")
  if criterion == "top":
    return np.argsort(-s, kind="stable")[:ipc]
  if criterion == "min":
    return asc[:ipc]
  pos = medium_positions(n, ipc)
  bad = [p for p in pos if not 0 <= p < n]
  if bad:
    raise ValueError(f"'medium' selection of {ipc} from {n} images needs "
                     f"sorted positions {bad} outside [0, {n}).")
  return asc[np.asarray(pos)]


def medium_positions(n: int, ipc: int) -> tuple[int, ...]:
  """Ascending-sorted positions the "medium" criterion takes, in order.

  `store_medium`: mid = ceil(n / 2), sign s starts at -1 and flips after
  each pick, position k = mid + int(s (k + 1) / 2) (int truncates towards
  0): mid, mid + 1, mid - 1, mid + 2, ... (METHODS.md C.5 step 3).
  """
  mid = math.ceil(n / 2)
  pos, sign = [], -1
  for k in range(ipc):
    pos.append(mid + int(sign * (k + 1) / 2))
    sign = -sign
  return tuple(pos)
