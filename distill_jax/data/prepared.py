"""Local copies prepared once by the builders of `distill_jax.data.local`.

`load_local` prepares a local dataset's ArrayRecord files under
``data_dir`` (e.g. ``~/tensorflow_datasets/local_mnist/1.0.0/``) from the
files of its folder and reads them back. A prepared copy is reused only
while its recorded source (size and sha256 of each file, in
``SOURCE_STAMP``) matches the files found; otherwise it is prepared again.
"""

import functools
import hashlib
import json
import os
import shutil
import threading

from absl import logging

from distill_jax.data import base
from distill_jax.data import readers
from distill_jax.data import tfds_source

SOURCE_STAMP = 'distill_jax_source.json'

_LOCK = threading.Lock()


def source_fingerprint(name: str, directory: str) -> dict:
  """Size and sha256 of each file a local dataset is prepared from."""
  _, files = readers.LAYOUTS[name]
  out = {}
  for f in files:
    path = os.path.join(directory, f)
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b''):  # pylint: disable=cell-var-from-loop
        h.update(chunk)
    out[f] = {'bytes': os.path.getsize(path), 'sha256': h.hexdigest()}
  return out


def _read_stamp(path: str):
  try:
    with open(path) as f:
      return json.load(f).get('files')
  except (OSError, ValueError, AttributeError):
    return None


@functools.lru_cache(maxsize=16)
def load_local(name: str, directory: str, data_dir: str) -> base.Raw:
  """Prepares (once per source, `prepare_local`) and reads a local dataset.

  Returns:
    The uint8 train and test splits.
  """
  return tfds_source.read_builder(prepare_local(name, directory, data_dir),
                                  f'local:{directory}')


def prepare_local(name: str, directory: str, data_dir: str):
  """Prepares a local dataset's ArrayRecord files (once per source).

  The prepared folder records the size and sha256 of the files it was made
  from (``SOURCE_STAMP``); a prepared folder made from other files (another
  copy, a test's fake data, or a version of this library that kept no
  record) is deleted and prepared again, so a run never silently reads data
  other than the files it was pointed at.

  Args:
    name: a local builder's name (`readers.LAYOUTS`).
    directory: the folder holding its files.
    data_dir: where the prepared files go.

  Returns:
    The prepared builder (read it with ``builder.as_data_source``).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from distill_jax.data import local as local_datasets
  want = source_fingerprint(name, directory)

  def make():
    return local_datasets.BUILDERS[name](data_dir=data_dir,
                                         file_format='array_record')
  with _LOCK:
    builder = make()
    prepared = os.path.abspath(os.fspath(builder.data_dir))
    # Only a folder of our own under data_dir is ever deleted or stamped
    # (under `tfds.testing.mock_data` the builder points elsewhere).
    ours = os.path.commonpath(
        [prepared, os.path.abspath(data_dir)]) == os.path.abspath(data_dir)
    stamp = os.path.join(prepared, SOURCE_STAMP)
    if ours and os.path.isdir(prepared) and _read_stamp(stamp) != want:
      logging.warning(
          '%s: the prepared copy in %s was not made from the files in %s '
          '(different or unrecorded source); preparing it again.', name,
          prepared, directory)
      shutil.rmtree(prepared)
      builder = make()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=directory))
    if ours and os.path.isdir(prepared) and _read_stamp(stamp) != want:
      tmp = f'{stamp}.tmp{os.getpid()}'
      with open(tmp, 'w') as f:
        json.dump({'source': directory, 'files': want}, f, indent=1)
      os.replace(tmp, stamp)
  return builder
