"""TensorBoard events and the profiler trace beside metrics.jsonl."""

import glob
import json
import os
import struct

from absl.testing import absltest
import numpy as np

from distill_jax import platform
from distill_jax.run import storage
from distill_jax.run import train_dd as train
from tests import test_utils


def _events(folder: str) -> list:
  """(tag, step, value) of every scalar in the event files (TFRecords)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(glob.glob(os.path.join(folder, "events.out.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in ev.summary.value:
        out.append((v.tag, ev.step, v.simple_value))
  return out


class ObserveTest(absltest.TestCase):

  def _run(self, **opts):
    wd = self.create_tempdir().full_path
    previous = platform.configure(platform.Platform(**opts))
    try:
      train.run(test_utils.tiny_config(outer_steps=4, eval_every=2), wd,
                dataset=test_utils.tiny_dataset(), show_progress=False)
    finally:
      platform.configure(previous)
    return wd

  def test_tensorboard_and_profile_leave_the_result_unchanged(self):
    plain = self._run()
    wd = self._run(tensorboard=True, profile_steps=2)
    a = storage.load_distilled_set(os.path.join(plain, "distilled.npz"))
    b = storage.load_distilled_set(os.path.join(wd, "distilled.npz"))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.raw_lr, b.raw_lr)
    # Every metrics.jsonl scalar is in the events, at its step.
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      recs = [json.loads(l) for l in f]
    events = {(t, s): v for t, s, v in _events(os.path.join(wd,
                                                              "tensorboard"))}
    for r in recs:
      for k in ("loss", "val_acc"):
        if k in r:
          self.assertAlmostEqual(events[(k, r["step"])], r[k], places=4)
    self.assertLen([k for k in events if k[0] == "loss"], 4)
    traces = glob.glob(os.path.join(wd, "profile", "plugins", "profile", "*",
                                    "*.xplane.pb"))
    self.assertLen(traces, 1)
    self.assertFalse(os.path.exists(os.path.join(plain, "tensorboard")))
    self.assertFalse(os.path.exists(os.path.join(plain, "profile")))

  def test_bad_values(self):
    with self.assertRaisesRegex(ValueError, "profile_steps=-1 must be"):
      platform.Platform(profile_steps=-1)
    with self.assertRaisesRegex(ValueError, "tensorboard='yes' must be"):
      platform.Platform(tensorboard="yes")


if __name__ == "__main__":
  absltest.main()
