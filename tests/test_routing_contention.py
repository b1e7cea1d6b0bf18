"""Verdicts that other threads cannot fake (issue 15, item 2).

A call is measured while other threads of the same process hold the GIL in pure Python: the
probe must blame the measured call only for what its own thread did. Short GIL-free calls
must not read as GIL-bound for lack of samples. A drift noticed by feedback counts as the
first disagreeing check.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hybridexec._routing import LearningClassifier
from hybridexec._routing import _verdicts as verdicts
from hybridexec._routing._measure import Measurement

from .helpers import spin
from .routing_helpers import cpu_hog as cpu_hog  # a fixture
from .routing_helpers import first_to

HOLDERS = 4
"""Threads holding the GIL in pure Python beside the measured call."""


def _majority(fn: Callable[..., Any], *args: Any, expected: str) -> None:
    first_to(fn, *args, expected=expected, right=4, wrong=4)


@pytest.fixture
def gil_holders() -> Iterator[None]:
    """``HOLDERS`` threads looping in pure Python: the GIL is always wanted by one of them."""
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            total = 0
            for i in range(2_000):
                total += i

    threads = [threading.Thread(target=hold, name=f"gil-holder-{i}") for i in range(HOLDERS)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(10)


# ---- GIL-free C code measured beside Python threads holding the GIL ------------------------
@pytest.mark.usefixtures("gil_holders")
@pytest.mark.parametrize(
    ("fn", "args"),
    [
        pytest.param(hashlib.sha256, (b"x" * 40_000_000,), id="sha256"),
        pytest.param(zlib.compress, (bytes(range(256)) * 20_000,), id="zlib"),
    ],
)
def test_gil_free_c_code_beside_gil_holding_threads_goes_to_threads(
    fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    _majority(fn, *args, expected="thread")


@pytest.mark.usefixtures("gil_holders")
def test_numpy_matrix_product_beside_gil_holding_threads_goes_to_threads() -> None:
    np = pytest.importorskip("numpy")
    a = np.random.default_rng(1).random((600, 600))
    _majority(np.matmul, a, a, expected="thread")


# ---- short GIL-free calls: too few samples are doubt, not a verdict --------------------------
@pytest.mark.usefixtures("cpu_hog")
def test_short_gil_free_numpy_sums_go_to_threads_under_load() -> None:
    np = pytest.importorskip("numpy")
    big = np.random.default_rng(3).random(8_000_000)  # a sum takes 2-4 ms
    # Without doubt, 13-17 of 20 fresh measurements read right beside a CPU hog (9 of 20 at
    # a load of 7), the others "GIL held 97-100%"; with it 17-20 of 20: 10 right before 5 wrong.
    first_to(np.sum, big, expected="thread", right=10, wrong=5)


def test_short_numpy_matrix_products_go_to_threads() -> None:
    np = pytest.importorskip("numpy")
    a = np.random.default_rng(1).random((600, 600))  # 5-10 ms, BLAS threads on both cores
    _majority(np.matmul, a, a, expected="thread")


# ---- the figures, injected -------------------------------------------------------------------
# The probe was late all along, but other Python threads used 90% of a CPU meanwhile: the lateness
# may be theirs. No stall could be read.
BLAMED = Measurement(wall=0.03, cpu=0.025, others_cpu=0.027, late=0.028, span=0.03)


def test_lateness_that_other_threads_may_have_caused_is_doubt() -> None:
    assert BLAMED.gil_busy is not None
    assert BLAMED.gil_busy > 0.9
    assert BLAMED.doubt is not None
    assert "other threads" in BLAMED.doubt
    assert BLAMED.gil_share < verdicts.GIL_FRACTION_MIN  # not blamed on the call
    alone = Measurement(wall=0.03, cpu=0.025, others_cpu=0.0005, late=0.028, span=0.03)
    assert alone.doubt is None  # nobody else ran: the lateness is the call's own
    assert verdicts.verdict(alone)[0] == "process"


def test_too_few_samples_are_doubt() -> None:
    short = Measurement(wall=0.004, cpu=0.004, late=0.004, span=0.004)
    assert short.doubt is not None
    assert "too short" in short.doubt
    one_stall = Measurement(wall=0.01, cpu=0.01, others_cpu=0.01, stalls_blocked=1)
    assert one_stall.doubt is not None
    settled = Measurement(wall=0.01, cpu=0.01, others_cpu=0.01, stalls_free=2)
    assert settled.doubt is None
    waiting = Measurement(wall=0.03, cpu=0.0005, others_cpu=0.03, late=0.03, span=0.03)
    assert waiting.doubt is None  # it waits: nothing to doubt


def test_a_long_wait_of_the_probe_settles_a_short_call_on_a_loaded_machine() -> None:
    # json.loads beside a CPU hog: 9 ms of CPU that never let the probe in, spread over
    # 25 ms (16 ms on a run queue). The probe waited 24 ms for the GIL: that is telling.
    loaded = Measurement(wall=0.0253, cpu=0.009, runq=0.016, late=0.024, span=0.0252)
    assert loaded.run_wall < 0.01
    assert loaded.doubt is None
    assert verdicts.verdict(loaded)[0] == "process"
    free = Measurement(wall=0.0253, cpu=0.009, runq=0.016, late=0.001, span=0.0252)
    assert free.doubt is not None  # the GIL was free: too few samples to say more
    # A GIL-free numpy sum preempted (GIL held) before it let the GIL go: the probe waited
    # as long as the thread waited for a CPU; that is the busy machine, not the call.
    preempted = Measurement(wall=0.0253, cpu=0.003, runq=0.02, late=0.02, span=0.0252)
    assert preempted.doubt is not None


def test_a_measurement_in_doubt_asks_for_the_next_call_and_sums_the_figures() -> None:
    clf = LearningClassifier()
    first = clf.classify(spin, (), {})
    assert first.probe is not None
    entry = next(iter(clf._entries.values()))
    generation = clf.generation
    clf._conclude(entry, BLAMED, recheck=False)
    assert not clf.explain(spin).learned  # no verdict yet
    assert clf.generation > generation
    second = clf.classify(spin, (), {})
    assert second.probe is not None  # the next call is measured
    # Summed with the first: two decisive stalls settle it.
    clf._conclude(entry, Measurement(wall=0.03, cpu=0.03, stalls_blocked=2), recheck=False)
    assert entry.decision is not None
    assert entry.decision.kind == "process"
    assert entry.measurement is not None
    assert entry.measurement.calls == 2
    assert entry.measurement.wall == pytest.approx(0.06)
    assert entry.measurement.gil_seconds == pytest.approx(0.0275 * entry.measurement.gil_share)
    two = Measurement(wall=0.02, cpu=0.01, stalls_blocked=2).merged(
        Measurement(wall=0.02, cpu=0.01, stalls_blocked=2)
    )
    assert two.gil_fraction == pytest.approx(Measurement(wall=0.02, cpu=0.01).gil_fraction)
    assert two.gil_seconds == pytest.approx(0.01)  # per call


def test_a_short_whole_call_leaning_to_threads_gets_threads_at_once_and_a_look_soon() -> None:
    # sha256 of 8 MB: 5 ms, over before the probe took a decisive stall; the GIL was free.
    short_free = Measurement(wall=0.005, cpu=0.005, late=0.0002, span=0.004)
    assert short_free.doubt is not None
    assert verdicts.threads_meanwhile(short_free)
    clf = LearningClassifier()
    assert clf.classify(spin, (), {}).probe is not None
    entry = next(iter(clf._entries.values()))
    clf._conclude(entry, short_free, recheck=False)
    decision = clf.classify(spin, (), {})
    assert decision.probe is None  # no second measured call: its submitters go on now
    assert decision.kind == "thread"
    assert "not settled" in decision.reason
    assert entry.recheck_every == verdicts.SUSPECT_GAP_FIRST
    # Leaning to processes (the probe woke late), cut short by the window, or found blocked
    # once: the second look stays.
    short_held = Measurement(wall=0.005, cpu=0.005, late=0.004, span=0.004)
    assert not verdicts.threads_meanwhile(short_held)
    cut = Measurement(wall=0.005, cpu=0.005, late=0.0002, span=0.004, complete=False)
    assert not verdicts.threads_meanwhile(cut)
    blocked = Measurement(wall=0.005, cpu=0.005, stalls_blocked=1, stalls_free=1)
    assert not verdicts.threads_meanwhile(blocked)
    clf = LearningClassifier()
    assert clf.classify(spin, (), {}).probe is not None
    clf._conclude(next(iter(clf._entries.values())), short_held, recheck=False)
    assert clf.classify(spin, (), {}).probe is not None


def test_doubt_that_persists_gives_threads_meanwhile_and_looks_again_soon() -> None:
    clf = LearningClassifier()
    for _ in range(1 + verdicts.UNSURE_TRIES):
        probe = clf.classify(spin, (), {}).probe
        assert probe is not None
        entry = next(iter(clf._entries.values()))
        clf._conclude(entry, BLAMED, recheck=False)
    decision = clf.classify(spin, (), {})
    assert decision.kind == "thread"
    assert "not settled" in decision.reason
    assert entry.recheck_every == verdicts.SUSPECT_GAP_FIRST
    # A re-check in doubt measures the next calls too, then is judged on its figures.
    entry.recheck = True
    for _ in range(1 + verdicts.UNSURE_TRIES):
        check = clf.classify(spin, (), {})
        assert check.probe is not None
        clf._conclude(entry, BLAMED, recheck=True)
    assert entry.decision is not None
    assert entry.decision.kind == "thread"


# ---- drift --------------------------------------------------------------------------------------
def test_drift_feedback_counts_as_the_first_disagreeing_check() -> None:
    clf = LearningClassifier()
    probe = clf.classify(spin, (), {}).probe
    assert probe is not None
    entry = next(iter(clf._entries.values()))
    waits = Measurement(wall=0.02, cpu=0.0002, late=0.0, span=0.01)
    clf._conclude(entry, waits, recheck=False)
    assert clf.classify(spin, (), {}).kind == "thread"
    for _ in range(verdicts.SUSPECT_GAP_FIRST):
        clf.record(spin, "thread", 0.02, 0.0002)
    clf.record(spin, "thread", 0.03, 0.03)  # it computes now: a drift
    check = clf.classify(spin, (), {})
    assert check.probe is not None
    gil_bound = Measurement(wall=0.03, cpu=0.03, stalls_blocked=4, late=0.02, span=0.025)
    clf._conclude(entry, gil_bound, recheck=True)
    decision = clf.classify(spin, (), {})
    assert decision.kind == "process", decision.reason


def test_only_a_drift_to_more_cpu_holds_the_next_submitters() -> None:
    # A GIL-free call measured alone (CPU/wall 1.0) reads 0.3 on a busy machine: a re-check,
    # but the calls submitted meanwhile go on by the verdict. One that computes more than
    # measured holds them until the re-check's verdict (see the governor's tests).
    clf = LearningClassifier()
    probe = clf.classify(spin, (), {}).probe
    assert probe is not None
    entry = next(iter(clf._entries.values()))
    gil_free = Measurement(wall=0.01, cpu=0.01, stalls_free=4, late=0.0, span=0.008)
    clf._conclude(entry, gil_free, recheck=False)
    assert clf.classify(spin, (), {}).kind == "thread"
    for _ in range(verdicts.SUSPECT_GAP_FIRST):
        clf.record(spin, "thread", 0.01, 0.01)
    clf.record(spin, "thread", 0.033, 0.01)  # lighter: the machine is busy
    assert entry.recheck
    assert not entry.hold
    check = clf.classify(spin, (), {})
    assert check.probe is not None
    meanwhile = clf.classify(spin, (), {})  # returns at once: not held
    assert meanwhile.probe is None
    assert meanwhile.kind == "thread"
    clf._conclude(entry, gil_free, recheck=True)  # the re-check confirms the verdict
    for _ in range(2 * verdicts.SUSPECT_GAP_FIRST):
        clf.record(spin, "thread", 0.01, 0.01)
    clf.record(spin, "thread", 0.05, 0.05)  # heavier: five times the measured CPU
    assert entry.recheck
    assert entry.hold
