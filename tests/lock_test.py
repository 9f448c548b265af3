"""One run per workdir: a second run gets a one-line error, changes nothing.

The lock is held by another process (a subprocess that takes
`workdir_lock` and waits), as a concurrent run would hold it.
"""

import os
import signal
import subprocess
import sys
import threading

from absl.testing import absltest

from distill_jax.methods import rat_bptt
from distill_jax.run import lock
from distill_jax.run import train_boost as boost
from distill_jax.run import train_dd as train
from distill_jax.run import train_rat as rat_train
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLDER = """
import sys
from distill_jax.run import lock
with lock.workdir_lock(sys.argv[1]):
  print("locked", flush=True)
  sys.stdin.read()
"""
_TRY = """
import sys
from distill_jax.run import lock
try:
  with lock.workdir_lock(sys.argv[1]):
    pass
except lock.WorkdirLockedError as e:
  sys.exit(str(e))
"""


def lockable_from_another_process(workdir: str) -> bool:
  proc = subprocess.run([sys.executable, "-c", _TRY, workdir], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  if proc.returncode and "is in use by another run" not in proc.stderr:
    raise AssertionError(f"the lock probe failed: {proc.stderr}")
  return proc.returncode == 0


def _rat_cfg(**kw):
  base = dict(arch="mlp", mlp_hidden=(8,), ipc=1, batch_per_class=1,
              total_steps=2, window=2, real_batch=12, outer_steps=1,
              eval_every=0, eval_budgets=(2,), val_nets=1, eval_nets=1,
              val_size=12)
  base.update(kw)
  return rat_bptt.RatConfig(**base).validate()


class HeldByAnotherProcess:
  """Context: a subprocess holds the lock of `workdir` until exit."""

  def __init__(self, workdir: str):
    self.workdir = workdir

  def __enter__(self):
    self.proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, self.workdir], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = self.proc.stdout.readline()
    if line.strip() != "locked":
      self.proc.kill()
      raise AssertionError(f"the lock holder did not start: {line!r}")
    return self.proc

  def __exit__(self, *exc):
    self.proc.stdin.close()  # the holder's stdin.read() returns: it exits.
    self.proc.wait(timeout=60)
    self.proc.stdout.close()


class WorkdirLockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.ds = test_utils.tiny_dataset()
    self.cfg = test_utils.tiny_config(outer_steps=2)

  def test_second_run_is_refused_then_runs_after_release(self):
    wd = self.create_tempdir().full_path
    cfg_path = os.path.join(wd, "config.json")
    with open(cfg_path, "w") as f:
      f.write("{\"the first run's\": 1}")
    with HeldByAnotherProcess(wd) as holder:
      with self.assertRaises(lock.WorkdirLockedError) as cm:
        train.run(self.cfg, wd, dataset=self.ds, show_progress=False)
      self.assertEqual(
          str(cm.exception),
          f"workdir {wd} is in use by another run (pid {holder.pid}); wait "
          "for it to finish or choose another --workdir.")
      self.assertIsInstance(cm.exception, ValueError)
      with self.assertRaises(lock.WorkdirLockedError):  # also on resume.
        train.run(self.cfg, wd, dataset=self.ds, show_progress=False,
                  resume=True)
      with open(cfg_path) as f:  # the refused runs changed nothing.
        self.assertEqual(f.read(), "{\"the first run's\": 1}")
      self.assertCountEqual(os.listdir(wd), ["config.json", lock.LOCK_FILE])
    report = train.run(self.cfg, wd, dataset=self.ds, show_progress=False)
    self.assertEqual(report["outer_steps"], 2)
    self.assertTrue(os.path.exists(os.path.join(wd, "distilled.npz")))

  def test_rat_bptt_and_boost_runs_are_refused(self):
    wd = self.create_tempdir().full_path
    with HeldByAnotherProcess(wd):
      with self.assertRaisesRegex(lock.WorkdirLockedError, "in use"):
        rat_train.run(_rat_cfg(), wd, dataset=self.ds, show_progress=False)
      with self.assertRaisesRegex(lock.WorkdirLockedError, "in use"):
        boost.run(_rat_cfg(boost_blocks=2), wd, dataset=self.ds,
                  show_progress=False)
    self.assertEqual(os.listdir(wd), [lock.LOCK_FILE])

  def test_a_killed_holder_leaves_no_stale_lock(self):
    wd = self.create_tempdir().full_path
    with HeldByAnotherProcess(wd) as holder:
      self.assertFalse(lockable_from_another_process(wd))
      holder.send_signal(signal.SIGKILL)  # no clean-up code runs.
      holder.wait(timeout=60)
      self.assertTrue(lockable_from_another_process(wd))
      with lock.workdir_lock(wd):
        pass

  def test_reentrant_in_one_thread_refused_from_another(self):
    wd = self.create_tempdir().full_path
    errors = []

    def other_thread():
      try:
        with lock.workdir_lock(wd):
          pass
      except lock.WorkdirLockedError as e:
        errors.append(e)
    with lock.workdir_lock(wd):
      with lock.workdir_lock(wd):  # e.g. boost.run -> rat_train.distill.
        pass
      t = threading.Thread(target=other_thread)
      t.start()
      t.join()
      self.assertLen(errors, 1)
      self.assertIn(f"(pid {os.getpid()})", str(errors[0]))
      self.assertFalse(lockable_from_another_process(wd))  # still held.
    self.assertTrue(lockable_from_another_process(wd))  # released.

  def test_workdir_that_is_a_file(self):
    path = self.create_tempfile(content="data").full_path
    with self.assertRaises(ValueError) as cm:
      train.run(self.cfg, path, dataset=self.ds, show_progress=False)
    self.assertEqual(
        str(cm.exception), f"--workdir {path} is a file, not a folder; "
        "remove it or choose another --workdir.")
    with self.assertRaisesRegex(ValueError, r"cannot be created \(Not a "):
      rat_train.run(_rat_cfg(), os.path.join(path, "sub"), dataset=self.ds,
                    show_progress=False)
    with open(path) as f:
      self.assertEqual(f.read(), "data")


if __name__ == "__main__":
  absltest.main()
