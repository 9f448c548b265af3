"""The bilevel core: pure functions shared by DD, RaT-BPTT and Boost-DD.

  * `inner`    one inner training step over an optax inner optimiser;
  * `schedule` which distilled examples inner step t sees;
  * `unroll`   forward-only burn-in, then a differentiable window;
  * `meta`     the meta-loss and its gradient, vmapped over initialisations;
  * `outer`    one outer step on the learned distilled data.

Nothing here does I/O or reads configuration objects: methods
(`distill_jax.methods.dd`, `distill_jax.methods.rat_bptt`) configure these
pieces.
"""
