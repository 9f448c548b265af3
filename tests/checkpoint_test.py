"""Checkpoints: exact round trip, newest kept, clear errors, URL paths,
--checkpoint_dir, written by process 0 only (multi-device and multi-host
restores: tests/multihost_test.py)."""

import os
from unittest import mock

from absl.testing import absltest
from etils.epath import testing as epath_testing
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import platform
from distill_jax.methods import rat_bptt
from distill_jax.platform import distributed
from distill_jax.run import checkpoint


def _state(scale=1.0):
  learned = {"x": jnp.arange(6.0).reshape(2, 3) * scale,
             "raw_lr": jnp.ones(4)}
  tx = optax.adam(1e-3)
  return {"state": rat_bptt.init_state(learned, tx),
          "best": {"x": np.full((2, 3), 2.5, np.float32)},
          "best_val": np.float32(-1), "best_step": np.int32(7)}


class CheckpointTest(absltest.TestCase):

  def test_round_trip_and_newest_kept(self):
    wd = self.create_tempdir().full_path
    mngr = checkpoint.manager(wd, max_to_keep=2)
    self.assertEqual(checkpoint.restore_latest(mngr, _state())[0], None)
    for step in (1, 2, 3):
      checkpoint.save(mngr, step, _state(step))
    self.assertEqual(mngr.steps(), [2, 3])
    self.assertEqual(
        sorted(os.listdir(mngr.directory)),
        ["ckpt_000000002.npz", "ckpt_000000003.npz"])  # no temporaries.
    step, got = checkpoint.restore_latest(mngr, _state())
    self.assertEqual(step, 3)
    want = _state(3)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    self.assertIsInstance(got["state"].learned["x"], jax.Array)
    self.assertEqual(got["state"].learned["x"].sharding,
                     want["state"].learned["x"].sharding)
    self.assertIsInstance(got["best"]["x"], np.ndarray)

  def test_other_configuration_or_corrupt_file_is_a_clear_error(self):
    wd = self.create_tempdir().full_path
    mngr = checkpoint.manager(wd)
    checkpoint.save(mngr, 5, _state())
    other = _state()
    other["best"]["x"] = np.zeros((4, 3), np.float32)
    with self.assertRaisesRegex(ValueError, "leaf .*fresh --workdir"):
      checkpoint.restore_latest(mngr, other)
    extra = {**_state(), "more": np.zeros(2)}
    with self.assertRaisesRegex(ValueError, "tree structure differs"):
      checkpoint.restore_latest(mngr, extra)
    with open(mngr.path(5), "wb") as f:
      f.write(b"not a checkpoint")
    with self.assertRaisesRegex(ValueError, "corrupt"):
      checkpoint.restore_latest(mngr, _state())

  def test_prng_keys_are_refused(self):
    mngr = checkpoint.manager(self.create_tempdir().full_path)
    with self.assertRaisesRegex(TypeError, "key_data"):
      checkpoint.save(mngr, 1, {"k": jax.random.key(0)})

  def test_url_paths_go_through_epath(self):
    # mock_epath sends gs:// paths to the local filesystem, relative to the
    # working directory (gs:/bucket/...), through the epath code path.
    cwd = os.getcwd()
    os.chdir(self.create_tempdir().full_path)
    self.addCleanup(os.chdir, cwd)
    with epath_testing.mock_epath():
      mngr = checkpoint.Manager("gs://bucket/run/ckpt", max_to_keep=2)
      self.assertEqual(mngr.steps(), [])
      for step in (1, 2, 3):
        checkpoint.save(mngr, step, _state(step))
      self.assertEqual(mngr.steps(), [2, 3])
      step, got = checkpoint.restore_latest(mngr, _state())
    self.assertEqual(step, 3)
    jax.tree.map(np.testing.assert_array_equal, got, _state(3))
    self.assertEqual(sorted(os.listdir("gs:/bucket/run/ckpt")),
                     ["ckpt_000000002.npz", "ckpt_000000003.npz"])

  def test_checkpoint_dir_of_the_platform(self):
    wd, elsewhere = (self.create_tempdir().full_path for _ in range(2))
    previous = platform.configure(platform.Platform(checkpoint_dir=elsewhere))
    self.addCleanup(platform.configure, previous)
    mngr = checkpoint.manager(wd)
    self.assertEqual(mngr.directory, elsewhere)
    checkpoint.save(mngr, 4, _state())
    self.assertEqual(os.listdir(elsewhere), ["ckpt_000000004.npz"])
    self.assertFalse(os.path.exists(os.path.join(wd, "checkpoints")))

  def test_only_the_writer_process_writes(self):
    mngr = checkpoint.manager(self.create_tempdir().full_path)
    with mock.patch.object(distributed, "is_writer", return_value=False):
      checkpoint.save(mngr, 1, _state())
    self.assertEqual(mngr.steps(), [])
    checkpoint.save(mngr, 1, _state())
    self.assertEqual(mngr.steps(), [1])


if __name__ == "__main__":
  absltest.main()
