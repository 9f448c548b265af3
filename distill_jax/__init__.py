"""distill_jax: dataset distillation as pure JAX functions."""

__version__ = "0.1.0"
