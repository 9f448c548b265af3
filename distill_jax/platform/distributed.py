"""Many hosts: `jax.distributed`, the one writing process, global arrays.

A run on several hosts (a TPU pod slice, a GPU cluster, or several
processes on one machine) starts the same program once per host; every
process calls `initialize` before any JAX computation, after which
`jax.devices()` lists the devices of all hosts and the mesh
(`platform.mesh`) spans them. The entry points in `experiments/` do this
from the flags --coordinator_address, --num_processes and --process_id:

  * no --coordinator_address (the default): one process, nothing to do;
  * --coordinator_address=auto: `jax.distributed.initialize()` with no
    arguments, which reads them from the cluster where JAX detects it
    (Cloud TPU pod slices, SLURM, Open MPI; JAX itself also reads the
    JAX_COORDINATOR_ADDRESS shell variable);
  * --coordinator_address=host:port --num_processes=N --process_id=i:
    explicit (process 0 runs the coordinator at host:port).

On CPU the processes' collectives go through gloo
(`jax_cpu_collectives_implementation`, JAX 0.10's default, set here when
it is off), so a localhost run with forced CPU devices is a real
multi-process run (tests/multihost_test.py).

What each process does. Every process computes every step (SPMD: one
program over the global mesh); only process 0 (`is_writer`) writes files:
config.json, metrics, checkpoints, the workdir lock, the distilled set,
figures and reports (`run.storage.atomic_write`, `run.loop`, `run.lock`,
`run.viz` check `is_writer`). The data: in memory (the default), every
host loads the whole dataset, which for these methods is small, and the
per-step real batches are gathered on the devices from it; with
`data_source="stream"` (DD, RaT-BPTT) each host reads only its part of
every real batch from the prepared ArrayRecord files (`data.stream`,
grain's `ShardByJaxProcess`) and the global batch is assembled from the
hosts' parts. What is sharded across the hosts' devices is the work: the
sampled initialisations on the mesh's "inits" axis (DD, RaT-BPTT,
Boost-DD; every initialisation sees the same real batch) and the batch on
the "data" axis (decoupled methods' recover, relabel and student steps).
`local_rows` and `global_batch` build a global batch from each host's rows.

Only process 0 reads the workdir's state: on --resume it reads the newest
checkpoint and sends it to the others (`run.checkpoint.restore_latest`),
so the workdir may live on process 0's own disk; --checkpoint_dir
(`Platform.checkpoint_dir`) may put the checkpoints in a bucket
(gs://..., `etils.epath`), where they outlive the machines.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AUTO = "auto"


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids=None) -> bool:
  """Joins the processes of a multi-host run (before any JAX computation).

  Args:
    coordinator_address: None or "" for one process; "auto" to let JAX read
      the cluster's settings (TPU pod slices, SLURM, Open MPI); else
      "host:port" of process 0's coordinator.
    num_processes: processes in all (None: from the cluster).
    process_id: this process, 0 .. num_processes - 1 (None: from the
      cluster).
    local_device_ids: restricts this process to these local devices
      (None: all, or JAX's per-cluster default).

  Returns:
    True when the run is distributed (also when already initialised).

  Raises:
    ValueError: inconsistent arguments, or JAX was already initialised
      (one line).
  """
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes={num_processes} must be >= 1.")
  if process_id is not None and (process_id < 0 or (
      num_processes is not None and process_id >= num_processes)):
    raise ValueError(f"process_id={process_id} must be in 0 .. "
                     f"num_processes - 1 ({num_processes} processes).")
  if not coordinator_address:
    if (num_processes or 1) > 1 or process_id:
      raise ValueError(
          f"num_processes={num_processes}, process_id={process_id} need a "
          "coordinator: pass --coordinator_address=host:port (process 0's "
          "address) or --coordinator_address=auto on a TPU pod or SLURM.")
    return False
  if jax.distributed.is_initialized():
    return True
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(num_processes=num_processes, process_id=process_id,
                local_device_ids=local_device_ids)
  if coordinator_address != AUTO:
    kwargs["coordinator_address"] = coordinator_address
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    raise ValueError(f"jax.distributed.initialize failed: "
                     f"{str(e).splitlines()[0]}") from e
  return True


def is_distributed() -> bool:
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
  """True in the one process that writes files (process 0; any process
  of a single-process run, without initialising JAX's backend)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def to_host(x) -> np.ndarray:
  """`x` as one numpy array on this host, also when it spans hosts.

  A collective when `x` is sharded across processes: every process must
  call it, at the same point of the program.
  """
  if isinstance(x, jax.Array) and not (x.is_fully_addressable or
                                       x.is_fully_replicated):
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def host_tree(tree):
  """`to_host` of every leaf (a collective for leaves that span hosts)."""
  return jax.tree.map(to_host, tree)


def agree(value: bool) -> bool:
  """Process 0's `value` in every process (decisions taken from the wall
  clock, which differs between hosts, must be the same everywhere)."""
  if not is_distributed():
    return bool(value)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(value))))


def place(host_array: np.ndarray, sharding) -> jax.Array:
  """A global array of `sharding` from the whole `host_array`, which every
  process holds (each process puts only its own devices' parts)."""
  host_array = np.asarray(host_array)
  if sharding.is_fully_addressable:
    return jax.device_put(host_array, sharding)
  return jax.make_array_from_callback(host_array.shape, sharding,
                                      lambda index: host_array[index])


def local_rows(n: int) -> slice:
  """The rows of an `n`-row global batch this process feeds (contiguous,
  in process order, as `global_batch` assembles them).

  Raises:
    ValueError: the process count does not divide `n`.
  """
  count, index = jax.process_count(), jax.process_index()
  if n % count:
    raise ValueError(f"batch={n} is not divisible by the {count} "
                     "processes; use a multiple of the process count.")
  per = n // count
  return slice(index * per, (index + 1) * per)


def global_batch(local: np.ndarray, mesh, axis: str) -> jax.Array:
  """The global batch whose leading axis is on `axis` of `mesh`, from this
  process's rows (`local_rows`); one process: `local` itself, placed."""
  sharding = NamedSharding(mesh, P(axis))
  return jax.make_array_from_process_local_data(sharding, np.asarray(local))
