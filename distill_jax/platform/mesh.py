"""Multi-device placement: the sampled-initialisation axis on a device mesh.

The meta-gradient is vmapped over J initialisations; with several devices
(TPU cores, GPUs, or `--xla_force_host_platform_device_count` on CPU) the J
axis is split across a 1-D mesh named "inits" with a sharding constraint at
the jit boundary. The distilled data and the real batch stay replicated and
XLA inserts the all-reduce of the gradient. On one device this is a no-op, so
the same code runs unchanged everywhere.
"""

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "inits"


def inits_mesh(num_inits: int) -> Mesh | None:
  """A 1-D mesh over all devices if it divides `num_inits`, else None."""
  devices = jax.devices()
  if len(devices) < 2 or num_inits % len(devices):
    return None
  return Mesh(np.asarray(devices), (AXIS,))


def shard_leading(tree, mesh: Mesh | None):
  """Constrains every leaf's leading axis to the mesh (inside jit)."""
  if mesh is None:
    return tree
  spec = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec),
                      tree)
