"""Multi-device placement: one 2-D device mesh with axes ("inits", "data").

The mesh is declared in the platform config (`Platform.mesh`, `--mesh`):
"auto" puts every device on the axis the method uses ("inits" for the
bilevel methods' sampled initialisations, "data" for batches), "none" runs
on one device, and "inits:4,data:2" names the axis sizes (their product
must be the device count). Leading axes are constrained at the jit boundary
(`shard_leading`, `replicate`); XLA inserts the all-reduces, and since
sharding never changes what jit computes, batch statistics stay global
means. A count that its axis size does not divide is refused with a
one-line ValueError. On one device every helper is a no-op.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

INITS = "inits"
DATA = "data"
AXES = (INITS, DATA)


def parse(spec: str) -> dict | None:
  """"auto" -> None; "none" -> {}; "inits:4,data:2" -> axis sizes.

  Raises:
    ValueError: an unknown axis or a size that is not a positive integer.
  """
  spec = spec.strip().lower()
  if spec == "auto":
    return None
  if spec in ("none", ""):
    return {}
  sizes = {}
  for part in spec.split(","):
    name, _, size = part.partition(":")
    if name.strip() not in AXES or not size.strip().isdigit() or int(
        size) < 1 or name.strip() in sizes:
      raise ValueError(f"mesh={spec!r}: use 'auto', 'none' or axis sizes "
                       "like 'inits:4,data:2' (axes inits, data).")
    sizes[name.strip()] = int(size)
  return sizes


def build(spec: str, axis: str = INITS, devices=None) -> Mesh | None:
  """The (inits, data) mesh of `spec`, or None on one device / "none".

  Raises:
    ValueError: the axis sizes do not multiply to the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse(spec)
  if sizes is None:
    sizes = {axis: len(devices)}
  if not sizes:
    return None
  shape = tuple(sizes.get(a, 1) for a in AXES)
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh={spec!r} needs {int(np.prod(shape))} devices "
                     f"but there are {len(devices)}; make the axis sizes "
                     "multiply to the device count, or use --mesh=auto.")
  if len(devices) == 1:
    return None
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def from_platform(axis: str = INITS) -> Mesh | None:
  """The mesh of the active `Platform.mesh` (read when a step is built)."""
  from distill_jax.platform import config  # pylint: disable=g-import-not-at-top
  return build(config.current().mesh, axis)


def axis_size(mesh: Mesh | None, axis: str) -> int:
  return 1 if mesh is None else int(mesh.shape[axis])


def check_divisible(mesh: Mesh | None, axis: str, count: int,
                    what: str) -> None:
  """Refuses `count` (named `what`) that the mesh's `axis` does not divide.

  Raises:
    ValueError: one line naming the count, the device count and the fix.
  """
  size = axis_size(mesh, axis)
  if count % size:
    raise ValueError(
        f"{what}={count} is not divisible by the {size} devices of the "
        f"mesh's {axis!r} axis ({mesh.devices.size} devices in all); use a "
        f"multiple of {size}, or another --mesh (e.g. --mesh=none for one "
        "device).")


def pad_to(count: int, mesh: Mesh | None, axis: str) -> int:
  """The smallest multiple of the axis size that holds `count` entries."""
  size = axis_size(mesh, axis)
  return -(-count // size) * size


def shard_leading(tree, mesh: Mesh | None, axis: str = INITS):
  """Constrains every leaf's leading axis to the mesh's `axis` (in jit)."""
  if mesh is None or axis_size(mesh, axis) == 1:
    return tree
  spec = NamedSharding(mesh, P(axis))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec),
                      tree)


def replicate(tree, mesh: Mesh | None):
  """Constrains every leaf to be replicated on every device (in jit)."""
  if mesh is None:
    return tree
  spec = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec),
                      tree)


def data_mesh(batch: int, what: str) -> Mesh | None:
  """The active mesh for a step whose batch of `batch` goes on "data".

  Raises:
    ValueError: the "data" axis does not divide `batch` (one line).
  """
  mesh = from_platform(DATA)
  check_divisible(mesh, DATA, batch, what)
  return mesh


def map_sharded(fn, tree, chunk: int, axis: str = INITS,
                pad_as: str | None = None):
  """`fn` over chunks of `tree`'s leading axis, each chunk placed on `axis`.

  For host-side loops over many independent entries (evaluation over
  held-out initialisations, teacher logits of many images). The chunk is
  rounded up to a multiple of the axis size and the last chunk is padded
  with copies of its last entry, whose outputs are dropped, so any count
  runs on every device. Where entries are not independent (train-mode
  BatchNorm statistics over a chunk), pass `pad_as` (the name of the
  count): chunks are then never padded and a count the axis does not divide
  is refused. With no mesh (one device) `fn` sees exactly the chunks of
  `chunk` entries, as without sharding. Returns the outputs concatenated
  along their leading axis.

  Raises:
    ValueError: with `pad_as`, a chunk the axis size does not divide.
  """
  mesh = from_platform(axis)
  size = axis_size(mesh, axis)
  chunk = pad_to(max(1, chunk), mesh, axis)
  n = jax.tree.leaves(tree)[0].shape[0]
  outs = []
  for start in range(0, n, chunk):
    part = jax.tree.map(lambda a, s=start: a[s:s + chunk], tree)
    m = min(chunk, n - start)
    if size > 1:
      if pad_as is not None:
        check_divisible(mesh, axis, m, pad_as)
      pad = pad_to(m, mesh, axis) - m
      if pad:
        part = jax.tree.map(lambda a: jnp.concatenate(
            [a, jnp.repeat(a[-1:], pad, axis=0)]), part)
      part = jax.device_put(part, NamedSharding(mesh, P(axis)))
    outs.append(jax.tree.map(lambda a, m=m: a[:m], fn(part)))
  return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)
