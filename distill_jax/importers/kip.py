"""KIP sets: an npz of support images and labels (neural_tangents KIP).

The KIP notebooks save the learned support set as an npz with the images
(N, H, W, C), standardised per channel with the training statistics and,
for most released sets, ZCA-whitened, and the labels (N, K), one-hot
centred by 1/K (``one_hot - 1/K``; assumed: written from the paper and the
public notebooks, not from a released file), learned in some runs. The
released file names say ``zca`` / ``nozca``; that is the guess for
``--zca=auto`` (a name saying neither needs ``--zca``).
"""

import os
import re
import zipfile

import numpy as np

from distill_jax.importers import contract as contract_lib

IMAGE_KEYS = ("images", "support_images", "x_support", "x")
LABEL_KEYS = ("labels", "support_labels", "y_support", "y")
ZCA_RECIPE = ("KIP notebooks: per-channel standardisation, then regularised "
              "ZCA fitted on the training split (strength not in the file)")


def zca_from_name(path: str) -> bool | None:
  """True for a name with ``zca``, False with ``nozca`` / ``no_zca``."""
  name = os.path.basename(path).lower()
  if re.search(r"(^|[^a-z])no_?zca", name):
    return False
  if "zca" in name:
    return True
  return None


def _pick(files: dict, keys, path: str, what: str) -> np.ndarray:
  for k in keys:
    if k in files:
      return files[k]
  raise contract_lib.fail(path, f"has no {what} (looked for "
                          f"{', '.join(keys)}; it holds {sorted(files)[:8]}).")


def load(path: str, opts: contract_lib.Options):
  """A KIP support set (see the module docstring).

  Raises:
    ImportFileError: not a readable npz, no images/labels, wrong shapes,
      or no ``--zca`` where the name does not say.
  """
  if os.path.isdir(path) or not zipfile.is_zipfile(path):
    raise contract_lib.fail(path, "is not an npz archive (a KIP set is one "
                            ".npz with images and labels).")
  try:
    with np.load(path, allow_pickle=False) as z:
      files = {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise contract_lib.fail(path, f"is not a readable npz (truncated, "
                            f"corrupt or pickled?): {e}") from e
  x = _pick(files, IMAGE_KEYS, path, "images")
  y = _pick(files, LABEL_KEYS, path, "labels")
  if x.ndim != 4 or y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
    raise contract_lib.fail(path, f"images {x.shape} / labels {y.shape} are "
                            "not (N, H, W, C) and (N, K) or (N,).")
  if y.ndim == 2:
    k = y.shape[1]
    labels, soft = contract_lib.targets_to_labels(
        np.asarray(y, np.float32) + 1.0 / k)
    centring, names = "one_hot - 1/K (assumed), undone", k
  else:
    labels, soft, centring, names = y.astype(np.int32), None, None, None
  mean, std, norm_from = contract_lib.normalisation(
      opts, contract_lib.TRAIN_SPLIT_STATS, x.shape[-1],
      "the training split's statistics (KIP's standardisation)")
  guess = zca_from_name(path)
  zca, zca_from = contract_lib.resolve_zca(
      opts, guess, "guessed from the file name" if guess is not None else
      "the file name does not say zca or nozca")
  contract = contract_lib.Contract(
      channel_order="NHWC", value_range="standardised: (pixel - mean) / std",
      mean=mean, std=std, normalisation_from=norm_from, zca=zca,
      zca_recipe=ZCA_RECIPE if zca else None, zca_from=zca_from,
      label_form=("soft targets (learned)" if soft is not None else
                  "classes"),
      label_centring=centring)
  return contract_lib.build(
      path, opts, x, labels, contract, soft=soft,
      class_names=None if names is None else [str(i) for i in range(names)])
