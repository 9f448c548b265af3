"""Methods: configurations of `distill_jax.core` (bilevel) and their loops."""
