"""The CPU thread count: guessed from the free cores, measured, re-measured on a collapse."""

from __future__ import annotations

import pytest

from vitcli import devices
from vitcli.devices import free_cores
from vitcli.training.threads import ThreadTuner, candidates


def test_free_cores_takes_the_load_off_the_usable_cores():
    assert free_cores(cores=2, load=0.1) == 2
    assert free_cores(cores=2, load=1.2) == 1
    assert free_cores(cores=2, load=9.0) == 1  # never below one
    assert free_cores(cores=16, load=4.0) == 12
    assert candidates(2) == [1, 2] and candidates(16) == [1, 8, 16]


def run(tuner: ThreadTuner, cost: dict[int, float], steps: int) -> list[str]:
    """Feed the tuner step times that depend on the thread count it set."""
    said = []
    for _ in range(steps):
        message = tuner.after_step(cost[tuner_threads[-1]])
        if message:
            said.append(message)
    return said


tuner_threads: list[int] = []


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    tuner_threads.clear()
    monkeypatch.setattr(devices, "load_average", lambda: 0.0)


def make(cores: int = 2, fixed: int = 0, clock=None) -> ThreadTuner:
    kw = {"clock": clock} if clock else {}
    return ThreadTuner(tuner_threads.append, fixed=fixed, cores=cores, **kw)


def test_a_busy_machine_gets_the_faster_count_by_measurement():
    tuner = make(cores=2)
    assert tuner_threads[-1] == 2  # quiet at the start: both cores
    said = run(tuner, {1: 0.010, 2: 0.250}, 12)  # 2 threads collapse (other processes)
    assert tuner.threads == 1 and tuner_threads[-1] == 1 and tuner.steady
    assert said and "CPU threads: 1" in said[0]


def test_a_quiet_machine_keeps_all_cores_and_says_nothing():
    tuner = make(cores=2)
    said = run(tuner, {1: 0.020, 2: 0.011}, 12)
    assert tuner.threads == 2 and tuner_threads[-1] == 2 and not said


def test_a_collapse_mid_run_is_measured_again():
    now = [0.0]
    tuner = make(cores=2, clock=lambda: now[0])
    run(tuner, {1: 0.020, 2: 0.011}, 12)
    assert tuner.threads == 2
    now[0] = 100.0  # later: two busy processes arrive, 2 threads now wait for each other
    said = run(tuner, {1: 0.025, 2: 0.300}, 12)
    assert tuner.threads == 1 and tuner.probes == 2
    assert any("measuring the thread count again" in s for s in said)
    assert any("CPU threads: 1" in s for s in said)


def test_threads_given_are_kept():
    tuner = make(cores=2, fixed=2)
    assert run(tuner, {1: 0.01, 2: 0.5}, 20) == [] and tuner_threads == [2]


def test_slow_steps_are_not_measured_twice():
    tuner = make(cores=2)
    run(tuner, {1: 9.0, 2: 8.0}, 6)
    assert tuner.probes == 0 and tuner.steady  # a 8-s step: keep the first guess


def test_the_busy_start_guess_uses_the_load(monkeypatch):
    monkeypatch.setattr(devices, "load_average", lambda: 6.0)
    tuner = make(cores=2)
    assert tuner_threads[-1] == 1 and "load 6.0" in tuner.reason
