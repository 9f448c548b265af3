"""Other toolkits' released distilled sets as `DistilledSet`s.

  from distill_jax import importers
  dset = importers.load("mtt", "run_folder/", dataset="cifar10", zca="no")

`FORMATS` names every reader: ``rat_bptt_h5`` (`rat_bptt_h5`), ``frepo``
and ``rcig`` (`frepo`), ``kip`` (`kip`), ``mtt`` (MTT/DATM, `mtt`, its
``.pt`` files read by `torch_pt` without torch) and ``dd_ranking_folder``
(`dd_ranking`). Each set comes back with method ``"imported"`` and
``metadata = {"source": format, "contract": {...}, ...}``, the
preprocessing contract of `contract.Contract`; the fair evaluation maps
its normalisation to the dataset's (`DistilledSet.normalised_as`) and
refuses sets whose contract says ZCA (`contract.is_zca`).
docs/interop.md ("Import") describes every format.
"""

import os

from distill_jax.distilled_set import DistilledSet
from distill_jax.importers import dd_ranking
from distill_jax.importers import frepo
from distill_jax.importers import kip
from distill_jax.importers import mtt
from distill_jax.importers import rat_bptt_h5
from distill_jax.importers.contract import ImportFileError
from distill_jax.importers.contract import Options
from distill_jax.importers.contract import ZCA_CHOICES
from distill_jax.importers.contract import is_zca

FORMATS = {
    "rat_bptt_h5": rat_bptt_h5.load,
    "frepo": frepo.load,
    "rcig": frepo.load,
    "kip": kip.load,
    "mtt": mtt.load,
    "dd_ranking_folder": dd_ranking.load,
}

__all__ = ["FORMATS", "ImportFileError", "Options", "ZCA_CHOICES", "is_zca",
           "load"]


def load(fmt: str, path: str, *, dataset: str, zca: str = "auto",
         mean=None, std=None) -> DistilledSet:
  """Reads another toolkit's set as a `DistilledSet` (method "imported").

  Args:
    fmt: one of `FORMATS`.
    path: the file or folder (see each format's module).
    dataset: the dataset it was distilled on (this library's name, e.g.
      ``cifar10``; stored as the set's dataset for the fair evaluation).
    zca: ``"auto"`` (the format's default, or an error where the file does
      not say), ``"yes"`` or ``"no"``.
    mean: the source normalisation's per-channel mean (pixel units), for
      datasets without a known one; None: the format's per-dataset value.
    std: its per-channel std.

  Returns:
    The validated `DistilledSet`; its ``metadata["contract"]`` records the
    preprocessing.

  Raises:
    ImportFileError: unknown format, missing, corrupt, foreign or unsafe
      file, or a contract the file leaves open (one line).
  """
  if fmt not in FORMATS:
    raise ImportFileError(f"format {fmt!r}; choose one of "
                          f"{', '.join(FORMATS)}.")
  if not dataset:
    raise ImportFileError("give the dataset the set was distilled on "
                          "(e.g. dataset='cifar10').")
  if not os.path.exists(path):
    raise ImportFileError(f"{path}: no such file or folder.")
  opts = Options(fmt=fmt, dataset=dataset, zca=zca,
                 mean=None if mean is None else tuple(mean),
                 std=None if std is None else tuple(std))
  return FORMATS[fmt](path, opts)
