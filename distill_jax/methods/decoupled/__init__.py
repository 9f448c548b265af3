"""The decoupled family: squeeze, recover, relabel, post-train.

SRe2L, CDA, DELT, SC-DD and G-VBSM train a teacher, optimise
synthetic pixels so that a frozen teacher's BN-input statistics match its
running statistics (plus CE), relabel augmented crops with the teacher and
post-train students with KD (METHODS.md Part C). SC-DD recovers against a
self-supervised teacher instead (`ssl`: SimCLR + linear probe).

  * `terms`     composable recover loss terms (CE, BN matching, priors);
  * `schedules` recover lr, CDA crop curriculum, DELT rounds and init order;
  * `pixels`    per-channel pixel clipping and the JPEG round trip;
  * `ssl`, `ssl_aug` SC-DD's SimCLR teacher, linear probe and views.
  * `gvbsm`, `gvbsm_terms`  G-VBSM's pool of teachers, round-robin step,
    EMA statistics, conv statistics and Gram term.

Augmentation (RandomResizedCrop, flip, roll, CutMix, Mixup) is in
`distill_jax.data.crops`.
"""
