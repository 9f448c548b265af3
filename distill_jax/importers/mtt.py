"""MTT and DATM sets: ``images_best.pt``, ``labels_best.pt``, ``lr_best.pt``.

The trajectory-matching code (MTT, and DATM built on it) saves the best
set of a run as three tensors in its run folder: the images (N, C, H, W) in
the normalised space of `utils.get_dataset` (ZCA-whitened on top when the
run used ``--zca``), the labels (N,) classes, or DATM's learned soft labels
(N, K), and the learned student learning rate (a scalar). The tensors are
read without torch (`torch_pt`). Nothing in the files says whether ZCA was
used, so ``--zca`` must be given.
"""

import os
import re

import numpy as np

from distill_jax.importers import contract as contract_lib
from distill_jax.importers import torch_pt

ZCA_RECIPE = ("kornia ZCAWhitening(eps=0.1) fitted on the normalised "
              "training split (MTT/DATM --zca)")


def run_files(path: str) -> dict:
  """{"images", "labels", "lr"} paths of a run folder or an images file.

  A folder gives its ``*_best.pt``; a file ``images_<tag>.pt`` gives its
  siblings ``labels_<tag>.pt`` and ``lr_<tag>.pt`` (lr may be absent).
  """
  if os.path.isdir(path):
    folder, tag = path, "best"
  else:
    m = re.fullmatch(r"images_(.+)\.pt", os.path.basename(path))
    if not m:
      raise contract_lib.fail(path, "is not an MTT images file: give the run "
                              "folder or its images_<tag>.pt (e.g. "
                              "images_best.pt).")
    folder, tag = os.path.dirname(path) or ".", m.group(1)
  out = {k: os.path.join(folder, f"{k}_{tag}.pt")
         for k in ("images", "labels", "lr")}
  for k in ("images", "labels"):
    if not os.path.exists(out[k]):
      raise contract_lib.fail(path, f"has no {os.path.basename(out[k])} "
                              "(MTT/DATM save images_best.pt and "
                              "labels_best.pt in the run folder).")
  if not os.path.exists(out["lr"]):
    out["lr"] = None
  return out


def _labels(y: np.ndarray, n: int, path: str):
  """(classes, soft or None, label form) of MTT classes or DATM soft labels."""
  if y.shape == (n,):
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(
        y, np.round(y)):
      raise contract_lib.fail(path, f"labels are {y.dtype} non-integers of "
                              f"shape {y.shape}, expected classes.")
    return y.astype(np.int32), None, "classes"
  if y.ndim == 2 and y.shape[0] == n:
    soft = y.astype(np.float32)
    return (np.argmax(soft, -1).astype(np.int32), soft,
            "soft targets as stored (DATM's learned soft labels); class = "
            "argmax")
  raise contract_lib.fail(path, f"labels have shape {y.shape}; expected ({n},)"
                          f" classes or ({n}, K) soft labels.")


def load(path: str, opts: contract_lib.Options):
  """An MTT / DATM run's set (see the module docstring).

  Raises:
    ImportFileError: missing or unreadable files, wrong shapes, or no
      ``--zca`` given.
  """
  files = run_files(path)
  x = torch_pt.tensor(files["images"], "images (N, C, H, W)")
  if x.ndim != 4:
    raise contract_lib.fail(files["images"], f"images have shape {x.shape}, "
                            "expected (N, C, H, W).")
  y = torch_pt.tensor(files["labels"], "labels")
  labels, soft, form = _labels(np.asarray(y), x.shape[0], files["labels"])
  lr = None
  if files["lr"] is not None:
    lr_arr = torch_pt.tensor(files["lr"], "the learned lr")
    if lr_arr.size != 1:
      raise contract_lib.fail(files["lr"], f"holds {lr_arr.size} values, "
                              "expected the one learned lr.")
    lr = float(lr_arr.reshape(()))
  images = contract_lib.nchw_to_nhwc(x.astype(np.float32))
  mean, std, norm_from = contract_lib.normalisation(
      opts, contract_lib.TORCH_CODE_STATS, images.shape[-1],
      "MTT's released code (utils.get_dataset)")
  zca, zca_from = contract_lib.resolve_zca(
      opts, None, "MTT/DATM files do not record whether the run used --zca")
  contract = contract_lib.Contract(
      channel_order="NCHW (transposed to NHWC)",
      value_range="normalised: (pixel - mean) / std",
      mean=mean, std=std, normalisation_from=norm_from, zca=zca,
      zca_recipe=ZCA_RECIPE if zca else None, zca_from=zca_from,
      label_form=form, label_centring=None, learned_lr=lr,
      notes=("the learned lr is the student's one step size for every "
             "step (syn_lr)",) if lr is not None else ())
  return contract_lib.build(path, opts, images, labels, contract, soft=soft)
