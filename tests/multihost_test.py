"""Many hosts: a real two-process run equals the one-process run, and
checkpoints move between device counts.

Two processes on localhost join with `jax.distributed` (gloo CPU
collectives), 4 forced CPU devices each, so the mesh's "inits" axis spans
8 devices on 2 processes; the DD run through the host loop must give the
one-process, 8-device result, only process 0 may write files, and a run
interrupted and resumed, where process 1 cannot see the checkpoints
(process 0 sends them), must equal the uninterrupted one. A DD run
checkpointed on 8 devices resumes on 1 and one checkpointed on 1 resumes
on 8, each ending where the uninterrupted 1-device run ends (float
tolerance: the sharded run sums the initialisations' meta-gradients in
another order); the restored state is the stored one bit for bit. Every
run is a subprocess (device counts are fixed before JAX starts). With
`data_source="stream"` each of the 2 processes reads only its half of every
real batch from the prepared ArrayRecord files, and the run equals one
process holding the dataset in memory.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distill_jax.platform import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-4, atol=1e-5)

RUN = textwrap.dedent("""
    import json, os, sys
    nproc, pid, port, workdir = (int(sys.argv[1]), int(sys.argv[2]),
                                 sys.argv[3], sys.argv[4])
    from distill_jax.platform import distributed
    assert distributed.initialize(
        f"localhost:{port}" if nproc > 1 else None, nproc, pid) == (nproc > 1)
    import jax, jax.numpy as jnp, numpy as np
    from distill_jax.platform import mesh as sharding
    from distill_jax.run import train_dd
    from tests import test_utils
    assert jax.device_count() == 8 and jax.process_count() == nproc
    assert distributed.is_writer() == (pid == 0)
    # Each process feeds its rows of a global batch on the "data" axis;
    # a sharded array comes back whole on every host.
    dmesh = sharding.build("auto", sharding.DATA)
    rows = distributed.local_rows(16)
    batch = distributed.global_batch(np.arange(16.0)[rows], dmesh, "data")
    assert batch.shape == (16,) and float(jax.jit(jnp.sum)(batch)) == 120.0
    np.testing.assert_array_equal(distributed.to_host(batch), np.arange(16))
    cfg = test_utils.tiny_config(num_inits=8, outer_steps=4, eval_every=2,
                                 checkpoint_every=2)
    ds = test_utils.tiny_dataset()
    report = train_dd.run(cfg, workdir, dataset=ds, show_progress=False)
    print("REPORT", json.dumps(report["test_acc"]), flush=True)
    if nproc > 1:  # interrupted and resumed: process 0 sends the checkpoint.
      again = workdir + "_resumed"
      assert train_dd.run(cfg, again, dataset=ds, show_progress=False,
                          stop_at=2) == {"interrupted_at": 2}
      train_dd.run(cfg, again, dataset=ds, show_progress=False, resume=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
              JAX_DISABLE_MOST_OPTIMIZATIONS="true",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _files(root) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, names in os.walk(root) for f in names)


def _metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k != "time_s"}
            for l in f]


def _two_processes(argv, cwd, env) -> list[str]:
  """Runs `python -c *argv(i)` as processes 0 and 1 side by side; their
  stdouts (each must exit 0; both are killed if one hangs)."""
  procs = [subprocess.Popen([sys.executable, "-c", *argv(i)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i in (0, 1)]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-3000:]
    outs.append(out)
  return outs


def _images(workdir) -> dict:
  with np.load(os.path.join(workdir, "distilled.npz")) as z:
    return {k: z[k] for k in ("images", "raw_lr")}


def test_two_processes_equal_one(tmp_path):
  port = str(_free_port())
  outs = _two_processes(
      lambda i: [RUN, "2", str(i), port, str(tmp_path / f"p{i}")], tmp_path,
      _env(4))
  one = subprocess.run([sys.executable, "-c", RUN, "1", "0", "0",
                        str(tmp_path / "one")], cwd=tmp_path, env=_env(8),
                       capture_output=True, text=True, timeout=240,
                       check=False)
  assert one.returncode == 0, one.stderr[-3000:]
  # Only process 0 wrote; it wrote what the one-process run writes.
  assert _files(tmp_path / "p1") == [] == _files(tmp_path / "p1_resumed")
  assert _files(tmp_path / "p0") == _files(tmp_path / "one")
  assert "checkpoints/ckpt_000000004.npz" in _files(tmp_path / "p0")
  a, b = _images(tmp_path / "p0"), _images(tmp_path / "one")
  for k in a:
    np.testing.assert_allclose(a[k], b[k], err_msg=k, **TOL)
  ma, mb = _metrics(tmp_path / "p0"), _metrics(tmp_path / "one")
  assert [m["step"] for m in ma] == [1, 2, 3, 4]
  for ra, rb in zip(ma, mb):
    assert ra.keys() == rb.keys()
    np.testing.assert_allclose([ra[k] for k in ra], [rb[k] for k in ra],
                               **TOL)
  # Resumed with the checkpoint only process 0 can see: the same run.
  c = _images(tmp_path / "p0_resumed")
  for k in a:
    np.testing.assert_array_equal(a[k], c[k], err_msg=k)
  assert _metrics(tmp_path / "p0_resumed") == ma
  # Both processes evaluated the same set the same way.
  reports = [l for o in outs for l in o.splitlines() if l.startswith("REPORT")]
  assert len(reports) == 2 and reports[0] == reports[1], reports


RESHARD = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from distill_jax.platform import mesh as sharding
    from distill_jax.run import checkpoint, train_dd
    from tests import test_utils
    save_probe, restore_probe, jobs = json.loads(sys.argv[1])
    mesh = sharding.build("auto", sharding.INITS)
    spec = None if mesh is None else NamedSharding(mesh, P(sharding.INITS))
    want = {"x": np.arange(48.0, dtype=np.float32).reshape(16, 3) / 7,
            "step": np.int32(5)}

    def placed(tree):  # x sharded over this run's devices, if several.
      return {"x": jax.device_put(tree["x"], spec), "step": tree["step"]}
    if save_probe:
      checkpoint.save(checkpoint.manager(save_probe), 5, placed(want))
    if restore_probe:  # written on the other device count: bit for bit.
      template = placed(jax.tree.map(np.zeros_like, want))
      step, got = checkpoint.restore_latest(
          checkpoint.manager(restore_probe), template)
      assert step == 5
      assert got["x"].sharding == template["x"].sharding, got["x"].sharding
      np.testing.assert_array_equal(np.asarray(got["x"]), want["x"])
    cfg = test_utils.tiny_config(num_inits=8, outer_steps=6,
                                 checkpoint_every=2)
    ds = test_utils.tiny_dataset()
    for workdir, stop_at, resume in jobs:
      train_dd.run(cfg, workdir, dataset=ds, show_progress=False,
                   stop_at=stop_at, resume=resume)
    print("DEVICES", jax.device_count())
""")


def _reshard_run(tmp_path, devices: int, save_probe, restore_probe,
                 jobs) -> None:
  arg = json.dumps([save_probe and str(tmp_path / save_probe),
                    restore_probe and str(tmp_path / restore_probe),
                    [[str(tmp_path / w), s, r] for w, s, r in jobs]])
  proc = subprocess.run([sys.executable, "-c", RESHARD, arg], cwd=tmp_path,
                        env=_env(devices), capture_output=True, text=True,
                        timeout=240, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"DEVICES {devices}" in proc.stdout


def test_checkpoints_move_between_device_counts(tmp_path):
  # 8 devices: 3 of 6 steps. 1 device: the uninterrupted run, 3 of 6 steps,
  # and the 8-device run's last 3. 8 devices: the 1-device run's last 3.
  _reshard_run(tmp_path, 8, "probe8", None, [("from8", 3, False)])
  _reshard_run(tmp_path, 1, "probe1", "probe8",
               [("ref", None, False), ("from1", 3, False),
                ("from8", None, True)])
  _reshard_run(tmp_path, 8, None, "probe1", [("from1", None, True)])
  ref = _images(tmp_path / "ref")
  for wd in ("from8", "from1"):
    got = _images(tmp_path / wd)
    for k in ref:
      np.testing.assert_allclose(got[k], ref[k], err_msg=f"{wd} {k}", **TOL)
    metrics = _metrics(tmp_path / wd)
    assert [m["step"] for m in metrics] == list(range(1, 7)), wd
    for a, b in zip(metrics, _metrics(tmp_path / "ref")):
      np.testing.assert_allclose([a[k] for k in b], [b[k] for k in b],
                                 err_msg=wd, **TOL)
  # The state moved (a run that changed nothing would also "match").
  lrs = [m["lr_mean"] for m in _metrics(tmp_path / "ref")]
  assert abs(lrs[-1] - lrs[0]) > 1e-4, lrs


def test_initialize_arguments():
  assert distributed.initialize(None) is False
  assert distributed.initialize("", 1, 0) is False
  with pytest.raises(ValueError, match="need a coordinator"):
    distributed.initialize(None, 2, 1)
  with pytest.raises(ValueError, match="process_id=2"):
    distributed.initialize("localhost:1", 2, 2)
  with pytest.raises(ValueError, match="num_processes=0"):
    distributed.initialize("localhost:1", 0, 0)
  assert distributed.is_writer()


STREAM = textwrap.dedent("""
    import json, sys
    nproc, pid, port, workdir, raw, source = sys.argv[1:7]
    nproc, pid = int(nproc), int(pid)
    from distill_jax.platform import distributed
    distributed.initialize(f"localhost:{port}" if nproc > 1 else None,
                           nproc, pid)
    from distill_jax.run import train_dd
    from tests import test_utils
    cfg = test_utils.tiny_config(
        dataset="mnist", num_inits=8, outer_steps=3, checkpoint_every=0,
        image_init="real", val_size=10, real_batch=16, data_source=source)
    report = train_dd.run(cfg, workdir, data_dir=raw, show_progress=False)
    if source == "stream":  # This host's part of every batch.
      from distill_jax import data
      ds = data.load("mnist", manual_dir=raw, data_source="stream",
                     val_size=10)
      shard = ds.streams["train"].shard
      assert (shard.shard_index, shard.shard_count) == (pid, 2), shard
      assert len(ds.x_train) == 0  # Never read whole.
    print("REPORT", json.dumps(report["test_acc"]), flush=True)
""")


def test_two_processes_stream_their_shards(tmp_path):
  """Each of 2 processes reads only its half of every real batch from the
  prepared ArrayRecord files; the run equals one process reading the whole
  dataset into memory."""
  from distill_jax import data  # pylint: disable=g-import-not-at-top
  from tests import test_utils  # pylint: disable=g-import-not-at-top
  raw = test_utils.write_fake_datasets(str(tmp_path / "raw"), n_train=120,
                                       n_test=40)
  env = dict(_env(4), TFDS_DATA_DIR=str(tmp_path / "tfds"))
  env.pop(data.ENV_DATA_DIR, None)
  prep = subprocess.run(  # Prepared once, before the processes read it.
      [sys.executable, "-c", "from distill_jax import data; data.load("
       f"'mnist', manual_dir={raw!r}, data_source='stream')"], cwd=tmp_path,
      env=env, capture_output=True, text=True, timeout=240, check=False)
  assert prep.returncode == 0, prep.stderr[-3000:]
  port = str(_free_port())
  _two_processes(lambda i: [STREAM, "2", str(i), port,
                            str(tmp_path / f"s{i}"), raw, "stream"],
                 tmp_path, env)
  one = subprocess.run([sys.executable, "-c", STREAM, "1", "0", "0",
                        str(tmp_path / "mem"), raw, "memory"], cwd=tmp_path,
                       env=dict(env, XLA_FLAGS=_env(8)["XLA_FLAGS"]),
                       capture_output=True, text=True, timeout=240,
                       check=False)
  assert one.returncode == 0, one.stderr[-3000:]
  assert _files(tmp_path / "s1") == []
  a, b = _images(tmp_path / "s0"), _images(tmp_path / "mem")
  for k in a:
    np.testing.assert_allclose(a[k], b[k], err_msg=k, **TOL)
  assert not np.allclose(a["images"], 0)
