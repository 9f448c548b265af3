"""PNG grids of distilled images, one file per distilled step, and plots.

In a multi-host run only process 0 draws and writes them
(`platform.distributed.is_writer`); the others return no paths.
"""

import os

import numpy as np

from distill_jax.platform import distributed


def _to_pixels(x: np.ndarray, mean, std) -> np.ndarray:
  return np.clip(x * np.asarray(std) + np.asarray(mean), 0.0, 1.0)


def save_step_grids(directory: str, x: np.ndarray, labels: np.ndarray,
                    lrs: np.ndarray, mean, std, class_names=None) -> list[str]:
  """Writes `step_XX.png` per distilled step with its learning rates.

  Args:
    directory: output folder (created).
    x: (S, n, H, W, C) images in normalised space.
    labels: (S, n) integer labels (or (S, n, C) soft labels: argmax shown).
    lrs: (S*E,) learned learning rates; step s is used at t = s, s+S, ...
    mean: normalisation mean per channel.
    std: normalisation std per channel.
    class_names: optional names shown under the images.

  Returns:
    The paths written.
  """
  if not distributed.is_writer():
    return []
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(directory, exist_ok=True)
  steps, n = x.shape[:2]
  pix = _to_pixels(np.asarray(x), mean, std)
  labels = np.asarray(labels)
  if labels.ndim == 3:
    labels = labels.argmax(-1)
  paths = []
  for s in range(steps):
    step_lrs = np.asarray(lrs)[s::steps]
    fig, axes = plt.subplots(1, n, figsize=(1.1 * n, 1.6), squeeze=False)
    for i in range(n):
      ax = axes[0, i]
      img = pix[s, i]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=1)
      name = (class_names[labels[s, i]] if class_names is not None
              else str(labels[s, i]))
      ax.set_title(name, fontsize=7)
      ax.axis("off")
    fig.suptitle(f"step {s}: lr " + ", ".join(f"{v:.4f}" for v in step_lrs),
                 fontsize=8)
    path = os.path.join(directory, f"step_{s:02d}.png")
    _save(fig, path, dpi=80)
    paths.append(path)
  return paths


def line_plot(path: str, series: dict, xlabel: str, ylabel: str,
              title: str = "") -> None:
  """Saves a line plot; `series` maps name -> (xs, means, stds or None)."""
  if not distributed.is_writer():
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for name, (xs, ys, es) in series.items():
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)


def bar_plot(path: str, groups: dict, series: tuple[str, ...],
             ylabel: str, title: str = "") -> None:
  """Saves grouped bars; `groups` maps a group (e.g. a method) to
  {series name: (mean, std)}; `series` orders the bars of a group."""
  if not distributed.is_writer():
    return
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(groups)
  width = 0.8 / max(1, len(series))
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
  for i, s in enumerate(series):
    xs = np.arange(len(names)) + (i - (len(series) - 1) / 2) * width
    ms = [groups[n].get(s, (np.nan, 0))[0] for n in names]
    es = [groups[n].get(s, (np.nan, 0))[1] for n in names]
    ax.bar(xs, ms, width, yerr=es, capsize=2, label=s)
  ax.set_xticks(np.arange(len(names)), names)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  _save(fig, path)


def _save(fig, path: str, dpi: int = 110) -> None:
  """Writes `fig` whole to a temporary file, then renames it (atomic)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  os.replace(tmp, path)
