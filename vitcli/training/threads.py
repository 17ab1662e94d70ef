"""How many CPU threads the maths gets: chosen from the cores actually free, and re-chosen
when the step time collapses.

torch starts one thread per core. When other processes use those cores (a laptop with a
browser, a shared CI runner, two more trainings), its threads wait for each other at every
operation: on 2 shared cores a forward pass of the quick-start model took 1 ms on 1 thread
and 251 ms on 2. So the count is first guessed from the cores this process may use
(`os.sched_getaffinity`) less the load average (`/proc/loadavg`), as eval, predict and
export guess it (vitcli.devices.choose_threads), then measured: a few real
training steps at each candidate count, the fastest kept. While training, a step time that
collapses (COLLAPSE × the time measured at the choice) sets off another measurement.

Library code: no printing. The trainer asks `after_step(seconds)` after every step and says
what changed through its own events.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vitcli.devices import choose_threads, usable_cores
from vitcli.errors import plural

WARMUP_STEPS = 2  # the first steps allocate and warm caches: not timed
PROBE_STEPS = 3  # steps timed at each candidate count (the median is kept)
COLLAPSE = 2.0  # a step this many times slower than at the choice sets off a new measurement
REPROBE_AFTER_S = 20.0  # at most one new measurement this often
MAX_PROBE_STEP_S = 5.0  # slower steps are not worth measuring twice: keep the first guess


def candidates(cores: int) -> list[int]:
    """Thread counts worth measuring: 1, the cores, and the half of them when there are many."""
    return sorted({1, cores, max(1, cores // 2)})


@dataclass
class ThreadTuner:
    """Sets torch's intra-op threads from measured step times.

    `fixed` (--threads N) turns the measuring off. `set_threads` is torch.set_num_threads
    (replaced in tests).
    """

    set_threads: Callable[[int], None]
    fixed: int = 0
    cores: int = field(default_factory=usable_cores)
    clock: Callable[[], float] = time.monotonic
    threads: int = 0
    reason: str = ""
    reference: float | None = None  # the median step time when the count was chosen
    _queue: list[int] = field(default_factory=list)
    _times: dict[int, list[float]] = field(default_factory=dict)
    _recent: list[float] = field(default_factory=list)
    _seen: int = 0
    _probed_at: float = -1e9
    probes: int = 0

    def __post_init__(self) -> None:
        first = choose_threads(self.fixed, self.cores)  # the guess inference keeps too
        self.threads, self.reason = first.count, first.reason
        self.set_threads(self.threads)

    @property
    def measuring(self) -> bool:
        return bool(self._queue)

    @property
    def steady(self) -> bool:
        """Whether the count is settled (step times now say something about the speed)."""
        return bool(self.fixed) or self.cores == 1 or (not self._queue
                                                       and self._seen >= WARMUP_STEPS)

    def after_step(self, seconds: float) -> str | None:
        """Count one step's wall time; returns a sentence when the thread count changed."""
        self._seen += 1
        if self.fixed or self.cores == 1:
            return None
        if self._seen <= WARMUP_STEPS:
            if self._seen == WARMUP_STEPS and seconds < MAX_PROBE_STEP_S:
                self._start_probe()
            return None
        if self._queue:
            return self._probe_step(seconds)
        self._recent = (self._recent + [seconds])[-PROBE_STEPS:]
        if (self.reference is not None and len(self._recent) == PROBE_STEPS
                and statistics.median(self._recent) > COLLAPSE * self.reference
                and self.clock() - self._probed_at > REPROBE_AFTER_S
                and seconds < MAX_PROBE_STEP_S):
            slow = statistics.median(self._recent)
            self._start_probe()
            return (f"steps slowed from {self.reference * 1000:.0f} to {slow * 1000:.0f} ms "
                    "(another process took the cores?): measuring the thread count again")
        return None

    def _start_probe(self) -> None:
        self._probed_at = self.clock()
        self.probes += 1
        # Begin with the current count, so that nothing changes when it is still the best.
        others = [c for c in candidates(self.cores) if c != self.threads]
        self._queue = [self.threads] * PROBE_STEPS
        for c in others:
            self._queue += [c] * PROBE_STEPS
        self._times = {}
        self._recent = []
        self.set_threads(self._queue[0])

    def _probe_step(self, seconds: float) -> str | None:
        current = self._queue.pop(0)
        self._times.setdefault(current, []).append(seconds)
        best_so_far = min((statistics.median(t) for c, t in self._times.items()
                           if c != current and len(t) >= PROBE_STEPS), default=None)
        if best_so_far is not None and seconds > COLLAPSE * best_so_far:
            # Clearly slower than a count already measured: no need to watch it twice more.
            self._queue = [c for c in self._queue if c != current]
        if self._queue:
            if self._queue[0] != current:
                self.set_threads(self._queue[0])
            return None
        medians = {c: statistics.median(t) for c, t in self._times.items()}
        best = min(medians, key=lambda c: medians[c])
        before, self.threads = self.threads, best
        self.reference = medians[best]
        self.set_threads(best)
        figures = ", ".join(f"{plural(c, 'thread')} {medians[c] * 1000:.0f} ms"
                            for c in sorted(medians))
        self.reason = f"measured: {figures} a step"
        if best != before or self.probes > 1:
            return f"CPU threads: {best} ({figures} a step)"
        return None
