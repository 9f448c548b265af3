"""RaT-BPTT sets: the ``.h5`` file of the released code.

The file holds ``data``, one row of C*H*W values per image (the flattened
NCHW tensor; a 4-D (N, C, H, W) ``data`` is read too), optionally
``label`` ((N,) classes or (N, K) learned targets, as stored) and
``epoch``. Without ``label`` the images are class-major, N/K per class, as
the code initialises them. The values are in the normalised input space
(ZCA-whitened when the run used ``--zca``); the file does not say which,
so ``--zca`` is required. Needs h5py (the ``import`` extra).
"""

import numpy as np

from distill_jax.importers import contract as contract_lib

IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                "kmnist": (28, 28, 1), "usps": (16, 16, 1),
                "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                "svhn_cropped": (32, 32, 3), "tiny_imagenet": (64, 64, 3)}
ZCA_RECIPE = ("RaT-BPTT --zca: per-image centring and L2 normalisation, then "
              "ZCA (regulariser 0.1 x mean eigenvalue) fitted on the "
              "training split (distill_jax.data.zca's recipe)")


def image_shape(d: int, dataset: str, path: str) -> tuple[int, int, int]:
  """(H, W, C) of rows of `d` values: the dataset's, else square images
  of 3 or 1 channels."""
  known = IMAGE_SHAPES.get(contract_lib.dataset_key(dataset))
  if known and int(np.prod(known)) == d:
    return known
  for c in (3, 1):
    side = int(round((d / c) ** 0.5))
    if d % c == 0 and side * side * c == d:
      return side, side, c
  raise contract_lib.fail(path, f"rows of {d} values are not square images "
                          "of 1 or 3 channels.")


def _read(path: str) -> dict:
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise contract_lib.ImportFileError(
        "reading RaT-BPTT .h5 files needs h5py: pip install "
        "'distill_jax[import]' (or h5py).") from e
  try:
    with h5py.File(path, "r") as f:
      if "data" not in f:
        raise contract_lib.fail(path, "has no 'data' dataset (a RaT-BPTT "
                                f".h5 holds data, label, epoch; found "
                                f"{sorted(f.keys())[:8]}).")
      return {k: np.asarray(f[k][()]) for k in ("data", "label", "epoch")
              if k in f and isinstance(f[k], h5py.Dataset)}
  except OSError as e:
    raise contract_lib.fail(path, f"is not a readable HDF5 file (truncated "
                            f"or corrupt?): {e}") from e


def _labels(files: dict, n: int, k: int, path: str):
  """(classes, soft or None, label form)."""
  y = files.get("label")
  if y is None:
    if n % k:
      raise contract_lib.fail(path, f"has no label and {n} images do not "
                              f"split into {k} classes.")
    return (np.repeat(np.arange(k), n // k).astype(np.int32), None,
            "classes, class-major (no label in the file)")
  if y.shape == (n,):
    return y.astype(np.int32), None, "classes"
  if y.ndim == 2 and y.shape[0] == n:
    labels, soft = contract_lib.targets_to_labels(y)
    return labels, soft, ("soft targets as stored; class = argmax" if
                          soft is not None else "one-hot")
  raise contract_lib.fail(path, f"label has shape {y.shape}, expected ({n},) "
                          f"or ({n}, K).")


def load(path: str, opts: contract_lib.Options):
  """A RaT-BPTT set (see the module docstring).

  Raises:
    ImportFileError: unreadable file, no data, shapes that are not images,
      or no ``--zca`` given.
  """
  files = _read(path)
  if "data" not in files or files["data"].dtype.kind not in "fiu":
    raise contract_lib.fail(path, "'data' is not a numeric array of images.")
  x = np.asarray(files["data"], np.float32)
  if x.ndim == 2:
    h, w, c = image_shape(x.shape[1], opts.dataset, path)
    x = x.reshape(-1, c, h, w)
  elif x.ndim != 4:
    raise contract_lib.fail(path, f"data has shape {x.shape}, expected "
                            "(N, C*H*W) rows or (N, C, H, W).")
  images = contract_lib.nchw_to_nhwc(x)
  y = files.get("label")
  if y is None:
    k = contract_lib.NUM_CLASSES.get(contract_lib.dataset_key(opts.dataset))
    if k is None:
      raise contract_lib.fail(path, "has no label, and the number of "
                              f"classes of {opts.dataset!r} is not known.")
  else:
    k = contract_lib.num_classes(opts.dataset, y if y.ndim == 1 else None,
                                 y if y.ndim == 2 else None)
  labels, soft, form = _labels(files, len(images), k, path)
  mean, std, norm_from = contract_lib.normalisation(
      opts, contract_lib.TORCH_CODE_STATS, images.shape[-1],
      "the per-dataset constants of the released code (MTT's, assumed)")
  zca, zca_from = contract_lib.resolve_zca(
      opts, None, "a RaT-BPTT .h5 does not record whether the run used --zca")
  contract = contract_lib.Contract(
      channel_order="rows of C*H*W (NCHW), reshaped to NHWC",
      value_range="normalised: (pixel - mean) / std",
      mean=mean, std=std, normalisation_from=norm_from, zca=zca,
      zca_recipe=ZCA_RECIPE if zca else None, zca_from=zca_from,
      label_form=form, label_centring=None)
  extra = {}
  if "epoch" in files and np.size(files["epoch"]) == 1:
    extra["epoch"] = int(np.ravel(files["epoch"])[0])
  return contract_lib.build(path, opts, images, labels, contract, soft=soft,
                            class_names=[str(i) for i in range(k)],
                            extra=extra)
