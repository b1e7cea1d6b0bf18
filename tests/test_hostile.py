"""Hostile input: what each bad callable, argument or result gets (docs/hostile-input.md).

Every case ends in a value or a precise exception, never a hang, and the executor keeps
working afterwards. The security checks are here too: no listening socket of our own, and
shared-memory segments that only their owner can open, under names nobody can guess.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import hybridexec
from hybridexec import Executor, SerializationError, WorkerCrashedError

from . import chaos_helpers as ch
from . import helpers
from .conftest import wait_until

RESULT_LIMIT = 30.0


def _still_usable(ex: Executor) -> None:
    for kind in ("process", "thread"):
        lane = ex.options(kind=kind)
        futures = [lane.submit(helpers.square, i) for i in range(4)]
        assert [f.result(timeout=RESULT_LIMIT) for f in futures] == [0, 1, 4, 9]


# ---- callables that are not callables ---------------------------------------------------------

NON_CALLABLES = [5, None, "print", b"fn", [helpers.square], object()]


@pytest.mark.parametrize("bad", NON_CALLABLES, ids=lambda b: type(b).__name__)
def test_non_callable_is_refused_at_submit_with_type_error(ex: Executor, bad: Any) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        ex.submit(bad)
    with pytest.raises(TypeError, match="must be callable"):
        ex.options(kind="process").submit(bad, 1)
    with pytest.raises(TypeError, match="must be callable"):
        ex.map(bad, [1, 2])
    with pytest.raises(TypeError, match="must be callable"):
        hybridexec.map(bad, [1, 2], executor=ex)
    with pytest.raises(TypeError, match="must be callable"):
        hybridexec.imap(bad, [1, 2], executor=ex)
    with pytest.raises(TypeError):
        hybridexec.spawn(bad)
    _still_usable(ex)


# ---- generator functions ----------------------------------------------------------------------


def test_generator_function_on_threads_returns_an_unconsumed_generator(ex: Executor) -> None:
    fut = ex.options(kind="thread").submit(ch.generator_function, 3)
    gen = fut.result(timeout=RESULT_LIMIT)
    assert isinstance(gen, Iterator)
    assert list(gen) == [0, 1, 2]  # the body runs only now, in the thread that iterates


def test_generator_function_in_a_process_fails_with_serialization_error(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(ch.generator_function, 3)
    with pytest.raises(SerializationError, match="generator"):
        fut.result(timeout=RESULT_LIMIT)
    _still_usable(ex)


# ---- arguments whose __reduce__ misbehaves ----------------------------------------------------

GARBAGE = [42, None, "no.such.global", (), (print,), (len, 5), (1, 2), (len, (), "x", 1, 2, 3)]


@pytest.mark.parametrize("garbage", GARBAGE, ids=repr)
def test_argument_whose_reduce_returns_garbage_fails_its_future(ex: Executor, garbage: Any) -> None:
    fut = ex.options(kind="process").submit(helpers.identity, ch.ReduceGarbage(garbage))
    with pytest.raises(SerializationError) as info:
        fut.result(timeout=RESULT_LIMIT)
    assert info.value.__cause__ is not None
    _still_usable(ex)


def test_argument_whose_reduce_raises_fails_its_future_with_the_cause(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(helpers.identity, ch.ReduceRaises())
    with pytest.raises(SerializationError, match="__reduce__ refuses") as info:
        fut.result(timeout=RESULT_LIMIT)
    assert isinstance(info.value.__cause__, RuntimeError)
    _still_usable(ex)


@pytest.mark.parametrize(
    "make",
    [ch.ReduceRaises, lambda: ch.ReduceGarbage(42), lambda: ch.nested_list(100_000)],
    ids=["reduce-raises", "reduce-garbage", "nested-100k-deep"],
)
def test_unpicklable_argument_with_kind_auto_runs_on_a_thread(ex: Executor, make: Any) -> None:
    arg = make()
    fut = ex.submit(helpers.identity, arg)
    assert fut.result(timeout=RESULT_LIMIT) is arg
    assert fut.kind == "thread"


def test_argument_too_deeply_nested_to_pickle_fails_with_serialization_error(
    ex: Executor,
) -> None:
    fut = ex.options(kind="process").submit(helpers.identity, ch.nested_list(100_000))
    with pytest.raises(SerializationError, match="recursion"):
        fut.result(timeout=RESULT_LIMIT)
    _still_usable(ex)


def test_argument_that_fails_to_unpickle_in_the_worker_fails_only_its_future(
    ex: Executor,
) -> None:
    lane = ex.options(kind="process")
    bad = lane.submit(helpers.identity, helpers.FailsToUnpickle())
    good = lane.submit(helpers.square, 5)
    with pytest.raises(SerializationError, match="could not unpickle the task"):
        bad.result(timeout=RESULT_LIMIT)
    assert good.result(timeout=RESULT_LIMIT) == 25
    assert ex.stats()["process_lane"]["crashes"] == 0


# ---- results that will not travel -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (helpers.return_unpicklable, ()),
        (ch.return_reduce_garbage, (42,)),
        (ch.return_reduce_garbage, ((len, 5),)),
    ],
    ids=["reduce-raises", "reduce-returns-int", "reduce-bad-args"],
)
def test_result_that_fails_to_pickle_fails_with_serialization_error(
    ex: Executor, fn: Any, args: tuple[Any, ...]
) -> None:
    fut = ex.options(kind="process").submit(fn, *args)
    with pytest.raises(SerializationError, match="result could not be pickled"):
        fut.result(timeout=RESULT_LIMIT)
    assert ex.stats()["process_lane"]["crashes"] == 0
    _still_usable(ex)


def test_result_that_fails_to_unpickle_in_the_parent_fails_with_serialization_error(
    ex: Executor,
) -> None:
    fut = ex.options(kind="process").submit(helpers.return_fails_to_unpickle_in, os.getpid())
    with pytest.raises(SerializationError, match="could not be unpickled"):
        fut.result(timeout=RESULT_LIMIT)
    _still_usable(ex)


def test_one_unpicklable_result_in_a_batch_fails_only_that_item(ex: Executor) -> None:
    fn = functools.partial(ch.unpicklable_on, bad=5)
    results = hybridexec.imap(fn, range(8), kind="process", chunksize=4, executor=ex)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(SerializationError):
        next(results)
    results.close()


def test_exception_that_fails_to_pickle_arrives_as_serialization_error_naming_it(
    ex: Executor,
) -> None:
    fut = ex.options(kind="process").submit(ch.raise_unpicklable_error)
    with pytest.raises(SerializationError, match="UnpicklableError: raised in the worker"):
        fut.result(timeout=RESULT_LIMIT)
    assert ex.stats()["process_lane"]["crashes"] == 0
    _still_usable(ex)


# ---- enormous arguments -----------------------------------------------------------------------


def test_enormous_bytes_argument_arrives_whole(ex: Executor) -> None:
    data = bytes(200 << 20)
    fut = ex.options(kind="process").submit(ch.byte_length, data)
    assert fut.result(timeout=60) == 200 << 20


def test_enormous_numpy_argument_goes_through_shared_memory(ex: Executor) -> None:
    np = pytest.importorskip("numpy")
    array = np.ones(32 << 20, dtype=np.uint8)  # 32 MiB
    fut = ex.options(kind="process").submit(ch.array_sum, array)
    assert fut.result(timeout=60) == float(32 << 20)


def test_enormous_result_arrives_whole(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(ch.big_bytes, 150)
    result = fut.result(timeout=60)
    assert len(result) == 150 << 20
    assert result[:1] == result[-1:] == b"\x01"


# ---- sys.exit, KeyboardInterrupt and friends inside the task ---------------------------------


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_sys_exit_in_fn_raises_system_exit_on_the_future_and_the_worker_lives(
    ex: Executor, kind: str
) -> None:
    lane = ex.options(kind=kind)
    lane.submit(helpers.square, 1).result(timeout=RESULT_LIMIT)
    pids = set(ex.worker_pids)
    fut = lane.submit(ch.sys_exit_with, 4)
    exc = fut.exception(timeout=RESULT_LIMIT)
    assert isinstance(exc, SystemExit)
    assert exc.code == 4
    assert ex.stats()["process_lane"]["crashes"] == 0
    assert set(ex.worker_pids) == pids
    _still_usable(ex)


def test_sys_exit_in_a_process_batch_fails_only_that_item(ex: Executor) -> None:
    results = hybridexec.imap(
        ch.sys_exit_on_three, range(6), kind="process", chunksize=3, executor=ex
    )
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SystemExit):
        next(results)
    results.close()
    assert ex.stats()["process_lane"]["crashes"] == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_sys_exit_in_a_thread_batch_fails_only_that_item(ex: Executor) -> None:
    lane = ex.options(kind="thread")
    results = lane.map(ch.sys_exit_on_three, range(6), chunksize=3, timeout=5)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SystemExit):
        next(results)


# ---- fn that forks ----------------------------------------------------------------------------


def test_fn_that_forks_a_child_which_exits_returns_normally(ex: Executor) -> None:
    lane = ex.options(kind="process")
    assert lane.submit(ch.fork_child_exits, 7).result(timeout=RESULT_LIMIT) == 7
    _still_usable(ex)


def test_fn_whose_forked_child_returns_does_not_answer_for_the_next_task() -> None:
    with Executor(max_processes=1) as ex:
        lane = ex.options(kind="process")
        # The child returns 0.3 s after the parent, while the next task runs.
        first = lane.submit(ch.fork_child_returns, 7, 0.3).result(timeout=RESULT_LIMIT)
        second = lane.submit(helpers.sleep_then, 1.5, "second").result(timeout=RESULT_LIMIT)
        third = lane.submit(helpers.square, 3).result(timeout=RESULT_LIMIT)
    assert first == ("parent", 7)
    assert second == "second"
    assert third == 9


# ---- nested executors -------------------------------------------------------------------------


def test_executor_inside_a_worker_runs_its_own_process_lane(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(ch.nested_executor_squares, 4)
    assert fut.result(timeout=60) == [0, 1, 4, 9]
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - started < 3.0


def test_default_map_inside_a_worker_returns_the_results(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(ch.nested_default_map, 4)
    assert fut.result(timeout=60) == [0, 1, 4, 9]


def test_shutdown_is_prompt_after_a_worker_used_the_default_executor(ex: Executor) -> None:
    fut = ex.options(kind="process").submit(ch.nested_default_map, 4)
    assert fut.result(timeout=60) == [0, 1, 4, 9]
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - started < 3.0


# ---- security: no listening socket ------------------------------------------------------------

UNIX_LISTENING = 0x10000  # __SO_ACCEPTCON in the Flags column of /proc/net/unix


def _listening_unix_sockets() -> dict[int, str]:
    """Inode -> path of every listening Unix socket on the machine (Linux)."""
    found: dict[int, str] = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[3], 16) & UNIX_LISTENING:
                found[int(fields[6])] = fields[7] if len(fields) > 7 else ""
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(int(match.group(1)))
    return inodes


def _family() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _listening_sockets_of_family() -> list[tuple[int, str, str]]:
    """(pid, command line, address) of each listening or inet socket in our process tree."""
    found: list[tuple[int, str, str]] = []
    unix = _listening_unix_sockets()
    for proc in _family():
        try:
            cmdline = f"[{proc.name()}] {' '.join(proc.cmdline())}"
            inet = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found.extend((proc.pid, cmdline, f"{c.laddr} {c.status}") for c in inet)
        found.extend((proc.pid, cmdline, unix[i]) for i in _socket_inodes(proc.pid) if i in unix)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_listening_socket_is_opened_by_the_library() -> None:
    np = pytest.importorskip("numpy")
    before = set(_listening_sockets_of_family())
    seen: set[tuple[int, str, str]] = set()
    with Executor(max_processes=2) as ex:
        lane = ex.options(kind="process")
        slow = [lane.submit(helpers.sleep_then, 1.0, i) for i in range(2)]
        threads = [ex.options(kind="thread").submit(helpers.sleep_then, 1.0, i) for i in range(2)]
        placed = ex.options(kind="process").submit(ch.array_sum, np.ones(1 << 18))
        actor = ex.spawn(ch.Keeper, kind="process")
        assert actor.ask(ch.Keeper.echo, 1).result(timeout=RESULT_LIMIT) == 1
        assert wait_until(lambda: all(f.running() for f in slow), RESULT_LIMIT)
        seen |= set(_listening_sockets_of_family())
        for fut in [*slow, *threads, placed]:
            fut.result(timeout=RESULT_LIMIT)
        seen |= set(_listening_sockets_of_family())
    new = seen - before
    # multiprocessing's forkserver (the default start method) listens on a Unix socket; it is
    # the standard library's (started as a new interpreter), at a path in a private
    # directory, never an abstract address (which any local user could connect to) and never
    # an inet port.
    ours = [s for s in new if "multiprocessing.forkserver" not in s[1]]
    assert not ours, f"hybridexec opened listening sockets: {ours}"
    for _, _, address in new:
        assert address.startswith("/"), f"the forkserver listens on {address!r}"
        directory = Path(address).parent
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
        assert directory.stat().st_uid == os.getuid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_inet_socket_at_all_in_the_process_tree_during_a_run(ex: Executor) -> None:
    lane = ex.options(kind="process")
    futures = [lane.submit(helpers.sleep_then, 0.5, i) for i in range(2)]
    assert wait_until(lambda: all(f.running() for f in futures), RESULT_LIMIT)
    inet = [(p.pid, c) for p in _family() for c in p.net_connections(kind="inet") if p.is_running()]
    assert not inet
    for fut in futures:
        fut.result(timeout=RESULT_LIMIT)


# ---- security: shared-memory segments ---------------------------------------------------------

SEGMENT_NAME = re.compile(r"hx(\d+)_([0-9a-f]{16})(?:t[0-9a-f]{8})?(?:w\d+)?\Z")


def _our_segments() -> dict[str, int]:
    """Name -> permission bits of each segment this process owns now."""
    found: dict[str, int] = {}
    for name in os.listdir("/dev/shm"):
        match = SEGMENT_NAME.match(name)
        if match and int(match.group(1)) == os.getpid():
            try:
                found[name] = stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode)
            except FileNotFoundError:
                pass  # released meanwhile
    return found


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_every_segment_made_during_a_run_is_owner_only_with_a_random_name(ex: Executor) -> None:
    np = pytest.importorskip("numpy")
    seen: dict[str, int] = {}
    shared = [
        hybridexec.SharedBuffer(4096),
        hybridexec.SharedArray.zeros(1000, "float64"),
        hybridexec.SharedList(["a", 1, 2.5]),
    ]
    try:
        lane = ex.options(kind="process")
        # Large arguments are placed in shared memory while their tasks run; results too.
        held = [lane.submit(helpers.sleep_then, 1.0, np.ones(1 << 18)) for _ in range(2)]
        assert wait_until(lambda: all(f.running() for f in held), RESULT_LIMIT)
        seen.update(_our_segments())
        results = [lane.submit(ch.make_array, 1 << 18, float(i)) for i in range(3)]
        for fut in [*held, *results]:
            fut.result(timeout=RESULT_LIMIT)
        seen.update(_our_segments())
    finally:
        for handle in shared:
            handle.close()
    assert len(seen) >= 5, seen
    assert all(mode == 0o600 for mode in seen.values()), {n: oct(m) for n, m in seen.items()}
    randoms = [SEGMENT_NAME.match(n).group(2) for n in seen]  # type: ignore[union-attr]
    assert len(set(randoms)) == len(randoms)
    assert all(len(set(r)) > 3 for r in randoms)  # 64 random bits, not a counter


def test_work_after_hostile_input_still_flows_through_both_lanes(ex: Executor) -> None:
    lane = ex.options(kind="process")
    bad = [
        lane.submit(helpers.identity, ch.ReduceRaises()),
        lane.submit(helpers.return_unpicklable),
        lane.submit(ch.sys_exit_with, 1),
        lane.submit(ch.recurse),
        lane.submit(helpers.exit_now, 2),
    ]
    _, not_done = concurrent.futures.wait(bad, timeout=60)
    assert not not_done
    kinds = [type(f.exception()) for f in bad]
    assert kinds == [
        SerializationError,
        SerializationError,
        SystemExit,
        RecursionError,
        WorkerCrashedError,
    ]
    _still_usable(ex)
