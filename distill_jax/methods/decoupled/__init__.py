"""The decoupled family: squeeze, recover, relabel, post-train.

SRe2L, CDA, DELT and G-VBSM (later SC-DD) train a teacher, optimise
synthetic pixels so that a frozen teacher's BN-input statistics match its
running statistics (plus CE), relabel augmented crops with the teacher and
post-train students with KD (METHODS.md Part C).

  * `terms`     composable recover loss terms (CE, BN matching, priors);
  * `schedules` recover lr, CDA crop curriculum, DELT rounds and init order;
  * `pixels`    per-channel pixel clipping and the JPEG round trip;
  * `gvbsm`, `gvbsm_terms`  G-VBSM's pool of teachers, round-robin step,
    EMA statistics, conv statistics and Gram term.

Augmentation (RandomResizedCrop, flip, roll, CutMix, Mixup) is in
`distill_jax.data.crops`.
"""
