"""Data: datasets (local copies, TFDS, the user's own files), transforms,
splits, augmentation, ZCA.

`from distill_jax import data` gives the loader and the array helpers:
`data.load(name, ...)` (a local builder, any TFDS image-classification
name, or a path to an .npz / image folder), `data.Dataset`, `data.decode`,
`data.normalize`, `data.split_validation`, ...; augmentation and ZCA are the
submodules `distill_jax.data.augment` and `distill_jax.data.zca`.

Modules: `datasets` (`load`), `registry` (the names and their errors),
`tfds_source` (TFDS builders by name), `prepared` and `local` (local copies
and their builders), `readers` (local file formats), `user` (the user's
own .npz files and image folders), `base` (`Dataset`, errors),
`transforms`, `splits`, `stream` (prepared splits read by index, never
materialised) and `sources` (one interface for splits in memory and
streamed).
"""

from distill_jax.data.datasets import available
from distill_jax.data.datasets import clear_cache
from distill_jax.data.datasets import DATA_SOURCES
from distill_jax.data.datasets import DataFileError
from distill_jax.data.datasets import Dataset
from distill_jax.data.datasets import DatasetNotFoundError
from distill_jax.data.datasets import ENV_DATA_DIR
from distill_jax.data.datasets import load
from distill_jax.data.datasets import load_for
from distill_jax.data.datasets import source_fingerprint
from distill_jax.data.registry import check_name
from distill_jax.data.splits import holdout_test
from distill_jax.data.splits import class_balanced_indices
from distill_jax.data.splits import split_validation
from distill_jax.data.splits import stratified_subset
from distill_jax.data.transforms import aligned_empty
from distill_jax.data.transforms import as_aligned
from distill_jax.data.transforms import decode
from distill_jax.data.transforms import denormalize
from distill_jax.data.transforms import normalize
from distill_jax.data.transforms import PIXELS
from distill_jax.data.transforms import resize

__all__ = [
    "available",
    "check_name",
    "clear_cache",
    "DATA_SOURCES",
    "DataFileError",
    "Dataset",
    "DatasetNotFoundError",
    "ENV_DATA_DIR",
    "load",
    "load_for",
    "source_fingerprint",
    "class_balanced_indices",
    "holdout_test",
    "split_validation",
    "stratified_subset",
    "aligned_empty",
    "as_aligned",
    "decode",
    "denormalize",
    "normalize",
    "PIXELS",
    "resize",
]
