"""The routing room: where each task goes, and why.

What the rest of the package may use is named here; everything else in the room is private.

Layers inside the room (each imports only those above it)::

    _options     Options and the checks of kind, timeout and max_memory
    _rules       hints (@io_bound, @cpu_bound, @task), the rules, Decision, the Classifier
                 protocol and its no_waiting() / WouldWait
    _explain     Explanation (what Executor.explain returns)
    _sched       the scheduler's view of a thread: run-queue wait, runnable, asleep on the GIL
    _measure     the thresholds of the probe and the maths of a measurement (Measurement)
    _stalls      the figures of one measured call (Window), the judgement of each stall
    _probe       the GIL probe: the helper thread that samples open windows
    _calls       a callable's name, the call its partials make, async def or not
    _verdicts    the thresholds, the verdict rule, the keys (size bucket, argument shape)
    _entry       what the classifier keeps per key
    _ticket      the ticket of a measured call, the switch-interval boost
    _classifier  LearningClassifier: learner state per key, feedback, re-checks
    _governor    Governor: the CPU slots shared by busy processes and CPU-heavy threads
    _binding     late binding (a task not started follows the newest verdict), the thread
                 lanes' gates, TimedTask (a measured thread task), Waits (GIL-off builds)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ._binding import Binding as Binding
    from ._binding import TimedTask as TimedTask
    from ._binding import Waits as Waits
    from ._binding import fn_key as fn_key
    from ._calls import function_name as function_name
    from ._classifier import LearningClassifier as LearningClassifier
    from ._explain import Explanation as Explanation
    from ._governor import Governor as Governor
    from ._options import KINDS as KINDS
    from ._options import NOT_GIVEN as NOT_GIVEN
    from ._options import Kind as Kind
    from ._options import NotGiven as NotGiven
    from ._options import Options as Options
    from ._options import check_classifier as check_classifier
    from ._options import check_count as check_count
    from ._options import check_kind as check_kind
    from ._options import check_max_memory as check_max_memory
    from ._options import check_timeout as check_timeout
    from ._options import checked_options as checked_options
    from ._options import resolve_counts as resolve_counts
    from ._rules import Classifier as Classifier
    from ._rules import Decision as Decision
    from ._rules import WouldWait as WouldWait
    from ._rules import cpu_bound as cpu_bound
    from ._rules import gil_enabled as gil_enabled
    from ._rules import hints_of as hints_of
    from ._rules import io_bound as io_bound
    from ._rules import no_waiting as no_waiting
    from ._rules import route as route
    from ._rules import route_rules as route_rules
    from ._rules import task as task

__all__ = [
    "KINDS",
    "Binding",
    "Classifier",
    "Decision",
    "Explanation",
    "Governor",
    "Kind",
    "LearningClassifier",
    "NOT_GIVEN",
    "NotGiven",
    "Options",
    "TimedTask",
    "Waits",
    "WouldWait",
    "check_classifier",
    "check_count",
    "check_kind",
    "check_max_memory",
    "check_timeout",
    "checked_options",
    "cpu_bound",
    "fn_key",
    "function_name",
    "gil_enabled",
    "hints_of",
    "io_bound",
    "no_waiting",
    "resolve_counts",
    "route",
    "route_rules",
    "task",
]

_OPTIONS = {"KINDS", "Kind", "NOT_GIVEN", "NotGiven", "Options", "checked_options"}
_OPTIONS |= {
    "check_classifier",
    "check_count",
    "check_kind",
    "check_max_memory",
    "check_timeout",
    "resolve_counts",
}
_BINDING = {"Binding", "TimedTask", "Waits", "fn_key"}
_ELSEWHERE = {"LearningClassifier", "Governor", "Explanation", "function_name", *_OPTIONS}
_ELSEWHERE |= _BINDING

__getattr__, __dir__ = exports(
    __name__,
    {name: "._rules" for name in __all__ if name not in _ELSEWHERE}
    | {"LearningClassifier": "._classifier", "Governor": "._governor"}
    | {"Explanation": "._explain", "function_name": "._calls"}
    | dict.fromkeys(_OPTIONS, "._options")
    | dict.fromkeys(_BINDING, "._binding"),
)
