"""DD-Ranking's ImageFolder layout: one folder of PNG/JPEG images per class.

``root/<class>/<image>.png`` (or .jpg/.jpeg), classes in sorted folder
order (torchvision's ImageFolder, which DD-Ranking reads), images sorted
within a class; optional ``root/soft_labels.npy`` (N, K) soft targets in
that image order. The images are pixels in [0, 1] (8-bit files), with no
normalisation or ZCA. When ``root/set.json`` is present (written by
``experiments.export_set --format=png``) its class names, class folders
and file order are used instead, so an export reads back in its own order.
"""

import json
import os

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from distill_jax.importers import contract as contract_lib

EXTENSIONS = (".png", ".jpg", ".jpeg")


def _from_listing(root: str):
  """(files, labels, class names) of a plain ImageFolder."""
  folders = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)))
  files, labels = [], []
  for k, folder in enumerate(folders):
    for name in sorted(os.listdir(os.path.join(root, folder))):
      if name.lower().endswith(EXTENSIONS):
        files.append(os.path.join(folder, name))
        labels.append(k)
  return files, labels, folders


def _from_set_json(root: str, meta: dict):
  """(files, labels, class names) in the order `set.json` records."""
  folders, names = meta["class_folders"], meta.get("class_names", [])
  if len(names) != len(folders):
    names = folders
  index = {f: k for k, f in enumerate(folders)}
  labels = []
  for rel in meta["files"]:
    folder = os.path.normpath(rel).split(os.sep)[0]
    if folder not in index or os.path.isabs(rel) or ".." in rel.split("/"):
      raise contract_lib.fail(root, f"set.json lists {rel!r} outside its "
                              "class folders.")
    labels.append(index[folder])
  return list(meta["files"]), labels, list(names)


def _listing(root: str):
  meta_path = os.path.join(root, "set.json")
  if not os.path.exists(meta_path):
    return _from_listing(root)
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise contract_lib.fail(meta_path, f"is not readable JSON: {e}") from e
  if isinstance(meta, dict) and {"files", "class_folders"} <= set(meta):
    return _from_set_json(root, meta)
  return _from_listing(root)


def _read_images(root: str, files: list[str]) -> np.ndarray:
  """(N, H, W, C) pixels in [0, 1]: grayscale if every image is, else RGB."""
  images = []
  try:
    for rel in files:
      with Image.open(os.path.join(root, rel)) as im:
        im.load()
        images.append(im.copy())
  except (OSError, UnidentifiedImageError) as e:
    raise contract_lib.fail(root, f"image {rel} is not readable: {e}") from e
  gray = all(im.mode in ("L", "1", "I;16", "I") for im in images)
  mode = "L" if gray else "RGB"
  arrays = [np.asarray(im.convert(mode), np.float32) / 255.0
            for im in images]
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise contract_lib.fail(root, f"images have different sizes "
                            f"{sorted(shapes)[:3]}; a distilled set has one.")
  x = np.stack(arrays)
  return x[..., None] if gray else x


def load(path: str, opts: contract_lib.Options):
  """An ImageFolder set (see the module docstring).

  Raises:
    ImportFileError: not a folder, no images, unreadable images, or
      soft labels that do not fit.
  """
  if not os.path.isdir(path):
    raise contract_lib.fail(path, "is not a folder (the ImageFolder layout "
                            "is root/<class>/<image>.png).")
  if opts.zca == "yes" or opts.mean is not None or opts.std is not None:
    raise contract_lib.ImportFileError(
        "dd_ranking_folder images are pixels in [0, 1]: --zca=yes, --mean "
        "and --std do not apply.")
  files, labels, names = _listing(path)
  if not files:
    raise contract_lib.fail(path, "holds no PNG/JPEG images in class "
                            "folders (root/<class>/<image>.png).")
  x = _read_images(path, files)
  soft, form = None, "classes (from the class folders)"
  soft_path = os.path.join(path, "soft_labels.npy")
  if os.path.exists(soft_path):
    try:
      soft = np.load(soft_path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError, EOFError) as e:
      raise contract_lib.fail(soft_path, f"is not a readable .npy: {e}") from e
    if soft.shape != (len(files), len(names)):
      raise contract_lib.fail(soft_path, f"has shape {soft.shape}, expected "
                              f"({len(files)}, {len(names)}).")
    form = "classes from the folders, soft targets from soft_labels.npy"
  c = x.shape[-1]
  contract = contract_lib.Contract(
      channel_order="image files (HWC)", value_range="pixels in [0, 1]",
      mean=(0.0,) * c, std=(1.0,) * c,
      normalisation_from="none (pixels)", zca=False, zca_recipe=None,
      zca_from="image files are never whitened", label_form=form,
      label_centring=None,
      notes=("8-bit files: values quantised to 1/255",))
  return contract_lib.build(path, opts, x, labels, contract, soft=soft,
                            class_names=names)
