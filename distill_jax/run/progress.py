"""A dependency-free progress line with rate, ETA and the current loss."""

import sys
import time


class Progress:
  """Prints `step/total [elapsed<eta, s/step] key=value ...` to stderr."""

  def __init__(self, total: int, start: int = 0, every_s: float = 1.0,
               stream=None, enabled: bool = True, time_budget_s: float = 0.0):
    self.total, self.start = total, start
    self.time_budget_s = time_budget_s
    self.every_s = every_s
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.t0 = time.time()
    self.last = 0.0

  def update(self, step: int, **values) -> None:
    now = time.time()
    if not self.enabled or (now - self.last < self.every_s and
                            step < self.total):
      return
    self.last = now
    done = max(step - self.start, 1)
    rate = (now - self.t0) / done
    eta = rate * (self.total - step)
    if self.time_budget_s:
      eta = max(0.0, min(eta, self.time_budget_s - (now - self.t0)))
    vals = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    end = "\n" if step >= self.total else ""
    self.stream.write(
        f"\r{step}/{self.total} [{_fmt(now - self.t0)}<{_fmt(eta)}, "
        f"{rate:.3f}s/step] {vals}   {end}")
    self.stream.flush()


def _fmt(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
