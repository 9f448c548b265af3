"""distill_jax: dataset distillation as pure JAX functions.

Public entry points (modules are imported explicitly, e.g.
`from distill_jax.run import train_dd as train`):

  * `distill_jax.run.train_dd.run(cfg, workdir)`: a whole DD run
    (`distill_jax.run.train_rat.run` for RaT-BPTT,
    `distill_jax.run.train_boost.run` for Boost-DD);
  * `distill_jax.core`: the bilevel core (`core.meta.value_and_grad`: the
    meta-gradient vmapped over initialisations);
  * `distill_jax.eval.replay`: replay / retrain evaluation;
  * `distill_jax.load_distilled_set(path)`: read and validate a distilled
    set (a `DistilledSet`, any method; `save_distilled_set` writes one).
"""

from distill_jax.config import DistillConfig
from distill_jax.distilled_set import DistilledSet
from distill_jax.run.storage import DistilledFileError
from distill_jax.run.storage import load_distilled_set
from distill_jax.run.storage import save_distilled_set

__version__ = "0.1.0"

__all__ = ["DistillConfig", "DistilledFileError", "DistilledSet",
           "load_distilled_set", "save_distilled_set", "__version__"]
