"""Metrics reported beside every distilled set (METHODS.md Part D).

Pure numpy / JAX functions, no I/O:

  * DD-Ranking scores (D.3, corrected by C.8 item 2): `hlr`, `ior`, `alpha`,
    `lrs` on accuracies as fractions in [0, 1]; `dd_ranking_percent`, the
    values DD-Ranking's code prints (it feeds percents into alpha and LRS);
    `ranking_report` with both forms.
  * Storage (D.4, D.6 item 4): `image_bytes`, `label_bytes` (hard, soft,
    FKD-style stored logits, top-k), `storage_summary`, `format_bytes`.
  * Within-class diversity of teacher features: `class_diversity`,
    `within_class_diversity`.
  * (The transferred discrepancy between two representations is in
    `eval.td`.)
  * `mean_std` for "mean +- std over >= 5 seeds" (D.6 item 5).
"""

import math
from typing import Optional, Sequence, Union

import numpy as np

ArrayLike = Union[float, Sequence[float], np.ndarray]

# Key data of one `jax.random.key` (threefry2x32: two uint32 words).
PRNG_KEY_BYTES = 8
_E = math.e


# ---------------------------------------------------------------- DD-Ranking


def _check_fraction(name: str, value) -> np.ndarray:
  value = np.asarray(value, np.float64)
  if np.any(value < 0.0) or np.any(value > 1.0):
    raise ValueError(
        f"{name}={value} is not a fraction in [0, 1]; pass accuracies as "
        "fractions (use dd_ranking_percent for DD-Ranking's percent form).")
  return value


def hlr(acc_full_hard: ArrayLike, acc_syn_hard: ArrayLike) -> np.ndarray:
  """Hard-label recovery, HLR = Acc_real-hard - Acc_syn-hard (D.3).

  Both accuracies use hard labels: the student trained on the full real
  data vs. on the distilled images. Fractions in [0, 1]; lower is better.
  """
  return (_check_fraction("acc_full_hard", acc_full_hard)
          - _check_fraction("acc_syn_hard", acc_syn_hard))


def ior(acc_syn: ArrayLike, acc_rand: ArrayLike) -> np.ndarray:
  """Improvement over random, IOR = Acc_syn-any - Acc_rdm-any (D.3).

  Distilled vs. class-balanced random real images of equal IPC, both under
  the method's own protocol (D.2). Fractions; higher is better.
  """
  return (_check_fraction("acc_syn", acc_syn)
          - _check_fraction("acc_rand", acc_rand))


def alpha(hlr_value: ArrayLike, ior_value: ArrayLike,
          w: float = 0.5) -> np.ndarray:
  """alpha = w * IOR - (1 - w) * HLR (D.3; DD-Ranking's `lrs_lambda` = w)."""
  return (w * np.asarray(ior_value, np.float64)
          - (1.0 - w) * np.asarray(hlr_value, np.float64))


def lrs(alpha_value: ArrayLike) -> np.ndarray:
  """Label-robust score, LRS = (e^alpha - e^-1) / (e - e^-1) (D.3).

  Maps alpha in [-1, 1] (fractions) monotonically onto [0, 1].
  """
  a = np.asarray(alpha_value, np.float64)
  return (np.exp(a) - 1.0 / _E) / (_E - 1.0 / _E)


def _runs(*values):
  """Broadcasts scalars / per-run sequences to 1-D float64 arrays."""
  arrays = np.broadcast_arrays(*[np.atleast_1d(np.asarray(v, np.float64))
                                 for v in values])
  return [a.reshape(-1) for a in arrays]


def dd_ranking_percent(acc_full_hard: ArrayLike, acc_syn_hard: ArrayLike,
                       acc_syn: ArrayLike, acc_rand: ArrayLike, *,
                       w: float = 0.5,
                       inputs_in_percent: bool = False) -> dict:
  """HLR / IOR / alpha / LRS as DD-Ranking's code computes and prints them.

  DD-Ranking@b8b0966 passes accuracies in percent (`utils/meter.py:168`)
  into `alpha = w*ior - (1-w)*hlr` and `lrs = (exp(alpha) - e^-1) /
  (e - e^-1)` (`metrics/soft_label.py:561-564`, `hard_label.py:380-383`)
  per evaluation run, then prints the mean and `np.std` over runs (C.8 item
  2). So HLR, IOR and alpha are 100x the fraction values, while its LRS is
  NOT 100x ours: it is the exponential of a percent-scale alpha, outside
  [0, 1] (e.g. alpha = -22.5 gives LRS = -0.1565, alpha = +5 gives 63.0),
  although its log line appends "%". Use it only to compare with the
  DD-Ranking leaderboard; report `lrs` (fractions) otherwise.

  Args:
    acc_full_hard: full-real-data accuracy, hard labels (scalar, as
      DD-Ranking's cache, or one per run).
    acc_syn_hard: distilled images, hard labels.
    acc_syn: distilled images under the method's protocol (soft labels).
    acc_rand: random real images under the same protocol.
    w: DD-Ranking's `lrs_lambda`.
    inputs_in_percent: accuracies are already percents (as DD-Ranking logs
      them); otherwise they are fractions and are multiplied by 100.

  Returns:
    dict with per-run arrays "hlr_runs", "ior_runs", "alpha_runs",
    "lrs_runs" and their means "hlr", "ior", "alpha", "lrs" and population
    stds "hlr_std", ... ("lrs" is the mean of per-run LRS, as DD-Ranking).
  """
  scale = 1.0 if inputs_in_percent else 100.0
  full, syn_h, syn, rand = [scale * a for a in _runs(
      acc_full_hard, acc_syn_hard, acc_syn, acc_rand)]
  out = {"hlr_runs": full - syn_h, "ior_runs": syn - rand}
  out["alpha_runs"] = alpha(out["hlr_runs"], out["ior_runs"], w)
  out["lrs_runs"] = lrs(out["alpha_runs"])
  for name in ("hlr", "ior", "alpha", "lrs"):
    runs = out[f"{name}_runs"]
    out[name], out[f"{name}_std"] = float(runs.mean()), float(runs.std())
  return out


def ranking_report(acc_full_hard: ArrayLike, acc_syn_hard: ArrayLike,
                   acc_syn_soft: ArrayLike, acc_rand_soft: ArrayLike, *,
                   w: float = 0.5,
                   acc_rand_hard: Optional[ArrayLike] = None) -> dict:
  """DD-Ranking metrics in both forms (D.3 with C.8 item 2).

  Accuracies are fractions, scalars or one value per evaluation run
  (broadcast together). Per run: HLR = full_hard - syn_hard, IOR =
  syn_soft - rand_soft, alpha, LRS; then mean and population std over runs,
  as DD-Ranking aggregates (so "lrs" is the mean of per-run LRS, and
  "lrs_of_mean" is LRS of the mean accuracies).

  Args:
    acc_full_hard: full real data, hard labels.
    acc_syn_hard: distilled images, hard labels.
    acc_syn_soft: distilled images, the method's soft-label protocol.
    acc_rand_soft: random real images, the same soft-label protocol.
    w: weight of IOR in alpha.
    acc_rand_hard: optional random real images with hard labels; adds the
      hard-label IOR / alpha / LRS (DD-Ranking's `hard_label.py` mode,
      where IOR = syn_hard - rand_hard).

  Returns:
    dict: "hlr", "ior", "alpha", "lrs" (+ "_std", fractions), "lrs_of_mean",
    "n", "w", "dd_ranking_percent" (the `dd_ranking_percent` dict without
    per-run arrays) and, with `acc_rand_hard`, "hard" (fraction form) and
    "dd_ranking_percent_hard".
  """
  full, syn_h, syn_s, rand_s = _runs(acc_full_hard, acc_syn_hard,
                                     acc_syn_soft, acc_rand_soft)

  def fraction_form(ior_runs, hlr_runs):
    a = alpha(hlr_runs, ior_runs, w)
    runs = {"hlr": hlr_runs, "ior": ior_runs, "alpha": a, "lrs": lrs(a)}
    out = {}
    for k, v in runs.items():
      out[k], out[f"{k}_std"] = float(v.mean()), float(v.std())
    out["lrs_of_mean"] = float(lrs(alpha(hlr_runs.mean(), ior_runs.mean(),
                                         w)))
    return out

  def percent_form(*accs):
    d = dd_ranking_percent(*accs, w=w)
    return {k: v for k, v in d.items() if not k.endswith("_runs")}

  hlr_runs = hlr(full, syn_h)
  report = fraction_form(ior(syn_s, rand_s), hlr_runs)
  report.update(n=int(full.size), w=w,
                dd_ranking_percent=percent_form(full, syn_h, syn_s, rand_s))
  if acc_rand_hard is not None:
    (rand_h,) = _runs(acc_rand_hard)
    rand_h = np.broadcast_to(rand_h, full.shape)
    report["hard"] = fraction_form(ior(syn_h, rand_h), hlr_runs)
    report["dd_ranking_percent_hard"] = percent_form(full, syn_h, syn_h,
                                                     rand_h)
  return report


# ------------------------------------------------------------------ storage


def image_bytes(images, dtype=None) -> int:
  """Bytes of the distilled images: number of values x bytes per value.

  Args:
    images: an array, or its shape (then `dtype` is required).
    dtype: storage dtype to count (e.g. `np.uint8` for 8-bit pixels);
      default: the array's own dtype.
  """
  if isinstance(images, (tuple, list)):
    if dtype is None:
      raise ValueError("dtype is required when images is a shape.")
    shape = tuple(images)
  else:
    shape = tuple(np.shape(images))
    dtype = images.dtype if dtype is None else dtype
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def label_bytes(kind: str, *, num_images: int,
                num_classes: Optional[int] = None,
                epochs: Optional[int] = None, top_k: Optional[int] = None,
                value_bytes: Optional[int] = None, index_bytes: int = 2,
                meta_bytes_per_epoch: int = 0,
                meta_bytes_per_image_epoch: int = 0) -> int:
  """Bytes needed to store the labels of N distilled images (D.4).

  kind:
    "hard":     N x index_bytes (one class index per image);
    "soft":     N x C x value_bytes (one fixed soft label; default fp32, 4 B);
    "fkd":      N x E x C x value_bytes, one stored logit vector per image
                and epoch (FKD / SRe2L relabel; default fp16, 2 B), so
                IN-1K IPC50 = 5e4 x 300 x 1000 x 2 B = 30 GB and MNIST IPC10
                = 100 x 300 x 10 x 2 B = 600 KB (D.4);
    "fkd_topk": N x E x k x (value_bytes + index_bytes), top-k values and
                their class indices (default 2 + 2 B).
  FKD kinds add E x meta_bytes_per_epoch (e.g. `PRNG_KEY_BYTES`, a key from
  which that epoch's crops and mixes are regenerated) and N x E x
  meta_bytes_per_image_epoch (explicit crop boxes / flip / mix partners).

  Returns:
    bytes, an int.
  """
  if kind in ("hard", "soft") and (epochs or top_k or meta_bytes_per_epoch
                                   or meta_bytes_per_image_epoch):
    raise ValueError(f"kind={kind!r} stores one label per image: epochs, "
                     "top_k and metadata do not apply.")
  n = int(num_images)
  if kind == "hard":
    return n * index_bytes
  if num_classes is None and kind != "fkd_topk":
    raise ValueError(f"kind={kind!r} needs num_classes.")
  if kind == "soft":
    return n * num_classes * (4 if value_bytes is None else value_bytes)
  if kind not in ("fkd", "fkd_topk"):
    raise ValueError(f"unknown label kind {kind!r}.")
  if not epochs:
    raise ValueError(f"kind={kind!r} needs epochs.")
  value_bytes = 2 if value_bytes is None else value_bytes
  if kind == "fkd":
    per_image_epoch = num_classes * value_bytes
  else:
    if not top_k:
      raise ValueError("kind='fkd_topk' needs top_k.")
    per_image_epoch = top_k * (value_bytes + index_bytes)
  return (n * epochs * (per_image_epoch + meta_bytes_per_image_epoch)
          + epochs * meta_bytes_per_epoch)


def format_bytes(num_bytes: float, *, binary: bool = False,
                 precision: int = 1) -> str:
  """Human-readable size: "30.0 GB" (powers of 1000) or "27.9 GiB" (1024)."""
  base = 1024.0 if binary else 1000.0
  units = (["B", "KiB", "MiB", "GiB", "TiB", "PiB"] if binary
           else ["B", "KB", "MB", "GB", "TB", "PB"])
  value, i = float(num_bytes), 0
  while abs(value) >= base and i < len(units) - 1:
    value, i = value / base, i + 1
  return f"{int(value)} B" if i == 0 else f"{value:.{precision}f} {units[i]}"


def storage_summary(images_nbytes: int, labels_nbytes: int) -> dict:
  """Image and label bytes side by side (D.6 item 4), with their ratio."""
  ratio = (labels_nbytes / images_nbytes) if images_nbytes else float("inf")
  return {"image_bytes": int(images_nbytes), "label_bytes": int(labels_nbytes),
          "label_to_image_ratio": ratio,
          "image": format_bytes(images_nbytes),
          "label": format_bytes(labels_nbytes)}


# ---------------------------------------------------------------- diversity


def _normalise(features, eps: float = 1e-12) -> np.ndarray:
  f = np.asarray(features, np.float64).reshape(np.shape(features)[0], -1)
  norm = np.linalg.norm(f, axis=1, keepdims=True)
  return f / np.maximum(norm, eps)


def class_diversity(features, labels, *, num_classes: Optional[int] = None,
                    include_singletons: bool = True) -> dict:
  """Within-class diversity of (teacher) features, by cosine distance.

  Each feature vector is L2-normalised (a zero vector stays zero, so its
  cosine with anything is 0 and its distance 1). For a class with n >= 2
  images, the pairwise diversity is the mean over the n(n-1)/2 unordered
  pairs of 1 - cos(z_i, z_j), computed as 1 - (||sum z||^2 - sum ||z||^2)
  / (n(n-1)); 0 for identical images, 1 for mutually orthogonal features,
  at most 2. The centroid diversity is the mean of 1 - cos(z_i, m), m the
  mean normalised feature of the class (1 when m = 0).

  A class with a single image has diversity 0 by definition (no pair, and
  the image is its own centroid); with `include_singletons=False` it is
  left out of the class average instead. Classes with no image are left
  out (NaN per class).

  Args:
    features: (N, ...) features, flattened per image.
    labels: (N,) integer classes.
    num_classes: classes 0..C-1 to report; default max(label) + 1.
    include_singletons: average single-image classes in as 0.

  Returns:
    dict with "pairwise" and "centroid" (class averages, floats; NaN if no
    class qualifies), "per_class_pairwise", "per_class_centroid" (C,) and
    "counts" (C,).
  """
  z = _normalise(features)
  labels = np.asarray(labels).reshape(-1)
  if labels.shape[0] != z.shape[0]:
    raise ValueError(f"{z.shape[0]} features but {labels.shape[0]} labels.")
  c_total = int(labels.max()) + 1 if num_classes is None else num_classes
  pair = np.full(c_total, np.nan)
  cent = np.full(c_total, np.nan)
  counts = np.zeros(c_total, np.int64)
  for c in range(c_total):
    zc = z[labels == c]
    n = counts[c] = zc.shape[0]
    if n == 0:
      continue
    if n == 1:
      pair[c] = cent[c] = 0.0
      continue
    s = zc.sum(0)
    pair[c] = 1.0 - (s @ s - np.sum(zc * zc)) / (n * (n - 1))
    m = s / n
    m_norm = np.linalg.norm(m)
    cos = zc @ m / m_norm if m_norm > 0 else np.zeros(n)
    cent[c] = float(np.mean(1.0 - cos))
  use = counts >= (1 if include_singletons else 2)

  def mean(v):
    return float(v[use].mean()) if use.any() else float("nan")

  return {"pairwise": mean(pair), "centroid": mean(cent),
          "per_class_pairwise": pair, "per_class_centroid": cent,
          "counts": counts}


def within_class_diversity(features, labels, *,
                           num_classes: Optional[int] = None,
                           include_singletons: bool = True) -> float:
  """Class average of the mean pairwise cosine distance (`class_diversity`)."""
  return class_diversity(features, labels, num_classes=num_classes,
                         include_singletons=include_singletons)["pairwise"]


# ---------------------------------------------------------------- reporting


def mean_std(values, *, ddof: int = 0) -> dict:
  """Mean and std of fractions, in percent: {"mean", "std", "n"}.

  Population std (ddof=0) by default, as `eval.accuracy.summary`,
  DD-Ranking (`np.std`) and most distillation repositories report.
  """
  v = np.asarray(values, np.float64).reshape(-1) * 100.0
  std = float(v.std(ddof=ddof)) if v.size > ddof else float("nan")
  return {"mean": float(v.mean()), "std": std, "n": int(v.size)}
