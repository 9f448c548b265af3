"""Cost of the decoupled family's recover iteration and post-train step.

Configurations (each in its own process, so peak RSS is its own), at the
shapes and settings of the CPU presets (`experiments/presets.py`,
`DECOUPLED`: ConvNet-BN w64 depth 3 teacher and students, 10 classes):
  * fashion_{sre2l,cda}_ipc{10,50}: Fashion-MNIST 28x28x1, cross-class
    batches (10 images, one per class; all IPC batches in one vmapped step),
    1000 / 500 iterations. CDA costs what SRe2L costs (only the crop scale
    floor is scheduled);
  * fashion_delt_ipc{10,50}: DELT, class-grouped batches (one class per
    batch), R = 8 rounds. Every round has its own compiled step that
    forwards only its active images; each round's step is timed, and the
    whole run's image-iterations are compared with CDA's (C.5: -36.25% at
    IPC 10, -42.25% at IPC 50). IPC 50 runs 1000 iterations, not the
    preset's 500: 500 is not a multiple of 8 rounds;
  * cifar10_sre2l_ipc10: CIFAR-10 32x32x3 (flip, jitter 4), 1000 iterations;
  * post_{fashion_ipc10,fashion_ipc50,cifar10_ipc10}: one post-train student
    step (batch 50 / 100 / 50, per-image crop views, CutMix, the online
    teacher's softmax at T = 20 as the target, AdamW), through the library's
    `eval.fit.supervised` + `fit.fit` as `posttrain.train_students` builds
    them, `steps` steps per timed call.
A randomly initialised teacher and random images of the right shapes are
used: the cost does not depend on weights or pixel values.

  python benchmarks/recover_step.py --out=/tmp/recover_step.json
  python benchmarks/recover_step.py --only=fashion_sre2l_ipc10 --runs=50

Reported per configuration: median / min seconds per recover iteration
(one iteration = one step over all C x IPC images, every batch) after a
warm-up, iterations per second, compile seconds, XLA FLOPs per iteration
(`cost_analysis`; the step has no loop) and GFLOP/s, XLA temporary bytes
(`memory_analysis`), process peak RSS, and the estimated seconds of the
whole recover run (iterations x median; DELT: the sum over rounds). For
DELT the top-level figures are its last round's (all images active); it
adds `rounds` (per-round figures), its image-iterations and their saving,
and the run's time saving against its own all-active step. Post-train:
median / min seconds per student step, images per second, and the
estimated training seconds of the preset (epochs x steps per epoch x
students). Compare with `torch_recover_step.py` run in the same sitting.
"""

# Imports inside functions: each configuration runs in its own process.
# pylint: disable=g-import-not-at-top

import dataclasses
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CLASSES = 10
SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
# Normalisation (only the pixel clip bounds depend on it, not the cost).
STATS = {"fashion_mnist": ((0.2860,), (0.3530,)),
         "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))}


def _mib(nbytes) -> float:
  return round(nbytes / 2**20, 1)


def _peak_rss_mib() -> float:
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _timed(fn, runs: int) -> list[float]:
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return times


def _teacher(spec: dict):
  import jax
  from distill_jax.methods.decoupled import teacher as teacher_lib
  from distill_jax.nn import stat_models
  t = spec["teacher"]
  model = stat_models.build(arch=t["arch"], width=t["width"],
                            depth=t["depth"], num_classes=CLASSES,
                            image_shape=tuple(spec["shape"]))
  return teacher_lib.Teacher(model, model.init(jax.random.key(0)), {})


def measure(spec: dict) -> dict:
  """Runs one configuration in this process and returns its figures."""
  sys.path.insert(0, ROOT)
  from distill_jax import platform
  # The decoupled entry point's platform defaults (experiments.decoupled).
  platform.configure(platform.Platform())
  spec = dict(spec)
  load = os.getloadavg()[0]  # other work on the cores skews the timing.
  if spec["kind"] == "posttrain":
    out = _measure_posttrain(spec)
  else:
    out = _measure_recover(spec)
  return {**out, "load_avg_1m_before": round(load, 2)}


def _measure_recover(spec: dict) -> dict:
  """Per-iteration cost of `recover.RoundStep`, per round for DELT."""
  import jax
  import jax.numpy as jnp
  from distill_jax.core import outer
  from distill_jax.methods.decoupled import recover
  from distill_jax.methods.decoupled import terms

  runs, shape = spec["runs"], tuple(spec["shape"])
  cfg = recover.RecoverConfig(**spec["recover"])
  teacher = _teacher(spec)
  objective = terms.sre2l(cfg.r_bn, cfg.first_bn_multiplier)
  mean, std = spec["mean"], spec["std"]
  step = recover.RoundStep(cfg, teacher, objective, shape, CLASSES,
                           jnp.asarray(mean), jnp.asarray(std))
  tx = recover.optimizer(cfg)
  # Random images instead of `init_images` (DELT's real init needs data).
  x0 = jax.random.normal(jax.random.key(1), (CLASSES, cfg.ipc, *shape))
  state = outer.init_state({"x": x0}, tx)
  targets = jnp.repeat(jnp.arange(CLASSES), cfg.ipc)
  key = jax.random.key(2)
  rounds = []
  for r in range(len(step.index)):
    t0 = r * cfg.round_iterations
    state = state.replace(step=jnp.asarray(t0, jnp.int32))
    t = time.perf_counter()
    compiled = step.lower(state, targets, key).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    args = step.args(t0, targets, key)
    holder = [state]

    def one(compiled=compiled, args=args, holder=holder):
      holder[0], _ = compiled(holder[0], *args)
      jax.block_until_ready(holder[0])
    one()  # warm-up
    times = _timed(one, runs)
    state = holder[0]
    med = statistics.median(times)
    index = step.index[r]
    rounds.append({
        "round": r, "batches": int(index.shape[0]),
        "batch_size": int(index.shape[1]), "images": int(index.size),
        "median_s": round(med, 5), "min_s": round(min(times), 5),
        "compile_s": round(compile_s, 2), "gflop_per_iter": round(
            flops / 1e9, 4), "gflops_per_s": round(flops / 1e9 / med, 1),
        "xla_temp_mib": _mib(temp)})
  peak_rss = _peak_rss_mib()
  iters = cfg.iterations
  run_s = sum(cfg.round_iterations * r["median_s"] for r in rounds[:-1])
  run_s += (iters - cfg.round_iterations * (len(rounds) - 1)) * \
      rounds[-1]["median_s"]
  last = rounds[-1]  # all images active: the figures of SRe2L/CDA.
  out = {k: v for k, v in spec.items() if k not in ("recover", "teacher")}
  out.update(
      method=cfg.method, ipc=cfg.ipc, iterations=iters,
      batching=cfg.batching, teacher=spec["teacher"],
      batches=last["batches"], batch_size=last["batch_size"],
      median_s=last["median_s"], min_s=last["min_s"],
      iters_per_s=round(1.0 / last["median_s"], 2),
      compile_s=round(sum(r["compile_s"] for r in rounds), 2),
      gflop_per_iter=last["gflop_per_iter"],
      gflops_per_s=last["gflops_per_s"],
      xla_temp_mib=max(r["xla_temp_mib"] for r in rounds),
      peak_rss_mib=peak_rss, run_estimate_s=round(run_s, 1),
      image_iterations=step.image_iterations(),
      backend=jax.default_backend(), jax=jax.__version__)
  if cfg.method == "delt":
    full = iters * CLASSES * cfg.ipc
    out.update(rounds=rounds, round_iterations=cfg.round_iterations,
               image_iterations_all_active=full,
               image_iteration_saving=round(
                   1 - out["image_iterations"] / full, 4),
               # Against this process's all-active step (same batching).
               time_saving_vs_all_active=round(
                   1 - run_s / (iters * last["median_s"]), 4))
  return out


def _measure_posttrain(spec: dict) -> dict:
  """Seconds per student step of post-train (online teacher, CutMix)."""
  import jax
  from distill_jax.eval import fit
  from distill_jax.methods.decoupled import posttrain
  from distill_jax.methods.decoupled import relabel
  from distill_jax.methods.decoupled import teacher as teacher_lib
  from distill_jax.nn import stat_models

  runs, steps, shape = spec["runs"], spec["steps"], tuple(spec["shape"])
  cfg = posttrain.PostTrainConfig(**spec["post"])
  teacher = _teacher(spec)
  n = CLASSES * spec["ipc"]
  images = jax.random.normal(jax.random.key(1), (n, *shape))
  # As `posttrain.train_students` builds its trainer (labels "online").
  batch = min(cfg.batch_size or posttrain.batch_size_for(spec["ipc"],
                                                         CLASSES), n)
  per_epoch = max(1, n // batch)
  model = stat_models.build(cfg.student_spec(CLASSES, shape))
  augment, targets = relabel.online_targets(teacher, cfg.view(),
                                            cfg.temperature, cfg.teacher_bn)
  tx = teacher_lib.optimizer(cfg.optimizer, cfg.lr, cfg.epochs * per_epoch,
                             schedule=cfg.schedule,
                             weight_decay=cfg.weight_decay)
  mix = posttrain._mix(cfg.mix)  # pylint: disable=protected-access
  trainer = fit.supervised(
      model, tx, images, fit.epoch_batches(n, batch),
      posttrain.kd_loss(cfg.temperature, cfg.t_squared), targets=targets,
      augment=augment, mix=mix)
  k_init, k_order, k_aug = jax.random.split(jax.random.key(2), 3)
  per_net = {"init_key": k_init[None], "key": k_aug[None],
             "keys": jax.random.split(k_order, -(-steps // per_epoch))[None]}
  fn = jax.jit(lambda p: fit.fit(trainer, p, (steps,),
                                 parallel=cfg.parallel))
  t = time.perf_counter()
  compiled = fn.lower(per_net).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  temp = int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1

  def one():
    jax.block_until_ready(compiled(per_net))
  one()  # warm-up
  times = [s / steps for s in _timed(one, runs)]
  med = statistics.median(times)
  out = {k: v for k, v in spec.items() if k != "post"}
  out.update(
      labels=cfg.labels, mix=cfg.mix, temperature=cfg.temperature,
      optimizer=cfg.optimizer, crop=cfg.crop, flip=cfg.flip,
      student={"arch": cfg.arch, "width": cfg.width, "depth": cfg.depth},
      batch_size=batch, steps_per_epoch=per_epoch,
      median_s=round(med, 5), min_s=round(min(times), 5),
      images_per_s=round(batch / med, 1),
      steps_per_s=round(1.0 / med, 2), compile_s=round(compile_s, 2),
      xla_temp_mib=_mib(temp), peak_rss_mib=_peak_rss_mib(),
      epochs=cfg.epochs, students=cfg.students,
      run_estimate_s=round(cfg.epochs * per_epoch * cfg.students * med, 1),
      backend=jax.default_backend(), jax=jax.__version__)
  return out


def _preset(name: str, **overrides):
  sys.path.insert(0, ROOT)
  from experiments import presets
  return presets.DECOUPLED(name).replace_flat(**overrides)


def _base(cfg) -> dict:
  mean, std = STATS[cfg.dataset]
  return {"dataset": cfg.dataset, "shape": list(SHAPES[cfg.dataset]),
          "mean": list(mean), "std": list(std),
          "teacher": {"arch": cfg.teacher.arch, "width": cfg.teacher.width,
                      "depth": cfg.teacher.depth}}


def recover_spec(name: str, preset: str, runs: int, **overrides) -> dict:
  """The spec of a recover configuration: the preset's recover recipe."""
  cfg = _preset(preset, **overrides)
  return {"name": name, "kind": "recover", "preset": preset, "runs": runs,
          **_base(cfg), "recover": dataclasses.asdict(cfg.recover_cfg())}


def post_spec(name: str, preset: str, runs: int, steps: int) -> dict:
  """The spec of a post-train configuration: the preset's protocol."""
  cfg = _preset(preset)
  return {"name": name, "kind": "posttrain", "preset": preset,
          "runs": runs, "steps": steps, "ipc": cfg.ipc, **_base(cfg),
          "post": dataclasses.asdict(cfg.post_cfg())}


def configs(runs: int, quick: bool) -> list[dict]:
  out = []
  for ipc in ((10,) if quick else (10, 50)):
    preset = f"fashion_ipc{ipc}"
    for method in (("sre2l",) if quick else ("sre2l", "cda")):
      out.append(recover_spec(f"fashion_{method}_ipc{ipc}", preset, runs,
                              method=method))
    # DELT: class-grouped batches of one class, 1000 iterations.
    over = {} if ipc == 10 else {"recover_iterations": 1000}
    out.append(recover_spec(f"fashion_delt_ipc{ipc}", preset, runs,
                            method="delt", recover_batching="class_grouped",
                            **over))
  if not quick:
    out.append(recover_spec("cifar10_sre2l_ipc10", "cifar10_ipc10", runs,
                            method="sre2l"))
  post_runs, steps = max(1, runs // 4), 4 if quick else 10
  for preset in (("fashion_ipc10",) if quick else
                 ("fashion_ipc10", "fashion_ipc50", "cifar10_ipc10")):
    out.append(post_spec(f"post_{preset}", preset, post_runs, steps))
  return out


def summarize(by: dict) -> dict:
  summary = {}
  for ipc in (10, 50):
    sre2l, cda = by.get(f"fashion_sre2l_ipc{ipc}"), by.get(
        f"fashion_cda_ipc{ipc}")
    delt = by.get(f"fashion_delt_ipc{ipc}")
    if sre2l and cda:
      summary[f"ipc{ipc}_cda_over_sre2l"] = round(
          cda["median_s"] / sre2l["median_s"], 3)
    if delt:
      summary[f"ipc{ipc}_delt_image_iteration_saving"] = delt[
          "image_iteration_saving"]
      summary[f"ipc{ipc}_delt_time_saving_vs_all_active"] = delt[
          "time_saving_vs_all_active"]
      if cda:  # CDA at DELT's iteration count, cross-class batches.
        summary[f"ipc{ipc}_delt_time_saving_vs_cda"] = round(
            1 - delt["run_estimate_s"] /
            (delt["iterations"] * cda["median_s"]), 4)
  for name, r in by.items():
    summary[f"{name}_run_estimate_s"] = r["run_estimate_s"]
    if r.get("kind") == "posttrain":
      summary[f"{name}_images_per_s"] = r["images_per_s"]
  return summary


def main():
  import sweep
  sweep.main(__file__, __doc__, "recover_step.json", 20, configs, measure,
             summarize)


if __name__ == "__main__":
  main()
