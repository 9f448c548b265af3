"""Platform configuration: XLA and CPU options, the device mesh.

`Platform` holds the explicit options; `configure(Platform(...))` makes
them active and `current()` returns the active ones
(`distill_jax.platform.config`).
"""

from distill_jax.platform.config import configure
from distill_jax.platform.config import current
from distill_jax.platform.config import Platform

__all__ = ["Platform", "configure", "current"]
