"""Actors: FIFO mailboxes, ask/tell, errors, stop, kill, supervision, bounded mailboxes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import hybridexec as hx
from hybridexec._actors import _supervisor as _actors_process

from .actor_helpers import Broken, Counter, peek
from .conftest import process_gone, wait_until

ActorFactory = Callable[..., "hx.ActorRef[Any]"]


@pytest.fixture(params=["thread", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def spawn() -> Iterator[ActorFactory]:
    """``hx.spawn`` that kills whatever the test left running, so one failure stays one."""
    refs: list[hx.ActorRef[Any]] = []

    def make(cls: Any, *args: Any, **kwargs: Any) -> hx.ActorRef[Any]:
        ref = hx.spawn(cls, *args, **kwargs)
        refs.append(ref)
        return ref

    yield make
    for ref in refs:
        ref.kill()
        ref.join(10)


class Gate:
    """Files a handler uses to say it started and to wait for its release."""

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.started = str(directory / f"{name}.started")
        self.release_path = str(directory / f"{name}.release")

    def wait_started(self) -> None:
        assert wait_until(lambda: os.path.exists(self.started), 20)

    def release(self) -> None:
        Path(self.release_path).touch()


def _dead(pid: int) -> bool:
    return process_gone(pid)


# ---- ask, tell, order ------------------------------------------------------------------------
def test_ask_returns_the_method_result(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, 10, kind=kind)
    future = ref.ask(Counter.add, 5)
    assert future.result(timeout=20) == 15
    assert future.kind == kind
    assert ref.kind == kind
    ref.stop()
    assert ref.state == "stopped"
    assert not ref.is_alive()


def test_messages_from_one_sender_are_handled_in_order(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)
    for i in range(300):
        ref.tell(Counter.record, i)
    assert ref.ask(Counter.recorded).result(timeout=20) == list(range(300))
    ref.stop()


def test_messages_are_handled_one_at_a_time(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)

    def hammer() -> None:
        for _ in range(200):
            ref.tell(Counter.add, 1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ref.ask(Counter.get).result(timeout=20) == 800  # no lost update
    assert ref.ask(Counter.concurrency).result(timeout=20) == 1
    ref.stop()


def test_each_sender_keeps_its_order_among_many_senders(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)

    def send(sender: int) -> None:
        for i in range(100):
            ref.tell(Counter.record, (sender, i))

    threads = [threading.Thread(target=send, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = ref.ask(Counter.recorded).result(timeout=20)
    for sender in range(3):
        assert [i for s, i in items if s == sender] == list(range(100))
    ref.stop()


def test_a_plain_function_taking_the_instance_is_a_handler(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, 7, kind=kind)
    assert ref.ask(peek, 1).result(timeout=20) == 8
    assert ref.ask(peek, extra=2).result(timeout=20) == 9
    ref.stop()


def test_pipelined_asks_all_resolve_in_order(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)
    futures = [ref.ask(Counter.add, 1) for _ in range(2000)]
    assert [f.result(timeout=30) for f in futures] == list(range(1, 2001))
    ref.stop()


# ---- errors ----------------------------------------------------------------------------------
def test_ask_error_goes_to_the_future_and_the_actor_goes_on(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)
    with pytest.raises(ValueError, match="bad") as info:
        ref.ask(Counter.fail, "bad").result(timeout=20)
    if kind == "process":
        assert isinstance(info.value.__cause__, hx.RemoteTraceback)
        assert "in fail" in str(info.value.__cause__)
    assert ref.ask(Counter.add, 2).result(timeout=20) == 2
    ref.stop()


def test_tell_error_goes_to_on_error_and_the_actor_goes_on(spawn: ActorFactory, kind: str) -> None:
    errors: list[BaseException] = []
    ref = spawn(Counter, kind=kind, on_error=errors.append)
    ref.tell(Counter.fail, "told")
    assert ref.ask(Counter.add, 1).result(timeout=20) == 1
    assert wait_until(lambda: len(errors) == 1)
    assert isinstance(errors[0], ValueError)
    assert str(errors[0]) == "told"
    ref.stop()


def test_tell_error_is_logged_by_default(
    spawn: ActorFactory, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ref = spawn(Counter, kind=kind)
    with caplog.at_level(logging.ERROR, logger="hybridexec"):
        ref.tell(Counter.fail, "logged")
        ref.ask(Counter.get).result(timeout=20)
        assert wait_until(lambda: "tell Counter.fail raised" in caplog.text)
    assert ref.state == "open"
    ref.stop()


def test_an_on_error_hook_that_raises_is_logged(
    spawn: ActorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(exc: BaseException) -> None:
        raise RuntimeError("hook failed")

    ref = spawn(Counter, on_error=bad_hook)
    with caplog.at_level(logging.ERROR, logger="hybridexec"):
        ref.tell(Counter.fail)
        ref.ask(Counter.get).result(timeout=20)
    assert "on_error hook" in caplog.text
    ref.stop()


def test_constructor_error_breaks_the_actor(spawn: ActorFactory, kind: str) -> None:
    errors: list[BaseException] = []
    ref = spawn(Broken, kind=kind, on_error=errors.append)
    with pytest.raises(hx.ActorBrokenError) as info:
        ref.ask(Broken.ping).result(timeout=20)
    assert isinstance(info.value.__cause__, ValueError)
    assert wait_until(lambda: not ref.is_alive())
    assert ref.state == "broken"
    with pytest.raises(hx.ActorBrokenError):
        ref.ask(Broken.ping)
    assert [type(e) for e in errors] == [ValueError]


def test_unpicklable_argument_raises_at_the_call(spawn: ActorFactory) -> None:
    ref = spawn(Counter, kind="process")
    with pytest.raises(hx.SerializationError):
        ref.ask(Counter.echo, threading.Lock())
    assert ref.ask(Counter.add, 1).result(timeout=20) == 1
    ref.stop()


def test_unpicklable_result_fails_only_that_ask(spawn: ActorFactory) -> None:
    ref = spawn(Counter, kind="process")
    with pytest.raises(hx.SerializationError):
        ref.ask(Counter.make_lock).result(timeout=20)
    assert ref.ask(Counter.add, 1).result(timeout=20) == 1
    ref.stop()


def test_ask_to_itself_inside_a_handler_raises_at_once(spawn: ActorFactory) -> None:
    ref = spawn(Counter)

    def ask_self(counter: Counter) -> str:
        try:
            ref.ask(Counter.get)
        except hx.ActorError as exc:
            return f"raised: {exc}"
        return "no error"

    def tell_self(counter: Counter) -> None:
        ref.tell(Counter.add, 5)

    assert ref.ask(ask_self).result(timeout=20).startswith("raised: actor Counter")
    ref.ask(tell_self).result(timeout=20)
    assert ref.ask(Counter.get).result(timeout=20) == 5
    ref.stop()


# ---- stop ------------------------------------------------------------------------------------
def test_stop_with_drain_handles_queued_messages_first(
    spawn: ActorFactory, kind: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    journal = str(tmp_path / "journal")
    ref = spawn(Counter, kind=kind, journal=journal)
    blocked = ref.ask(Counter.block, gate.started, gate.release_path)
    queued = [ref.ask(Counter.add, 1) for _ in range(5)]
    gate.wait_started()
    ref.stop(drain=True, wait=False)
    with pytest.raises(hx.ActorClosedError):
        ref.ask(Counter.add, 1)
    gate.release()
    assert ref.join(20)
    assert blocked.result() == "released"
    assert [f.result() for f in queued] == [1, 2, 3, 4, 5]
    assert Path(journal).read_text().splitlines()[-1] == "stopped 5"  # on_stop ran last


def test_stop_without_drain_fails_queued_asks_unhandled(
    spawn: ActorFactory, kind: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    journal = str(tmp_path / "journal")
    ref = spawn(Counter, kind=kind, journal=journal)
    blocked = ref.ask(Counter.block, gate.started, gate.release_path)
    queued = [ref.ask(Counter.add, 1) for _ in range(5)]
    gate.wait_started()
    ref.stop(drain=False, wait=False)
    gate.release()
    assert ref.join(20)
    assert blocked.result() == "released"  # the running message finishes
    for future in queued:
        with pytest.raises(hx.ActorClosedError):
            future.result()
    assert Path(journal).read_text().splitlines()[-1] == "stopped 0"  # none of them ran


def test_stop_without_drain_after_stop_with_drain_still_discards(
    spawn: ActorFactory, kind: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind=kind)
    ref.ask(Counter.block, gate.started, gate.release_path)
    queued = [ref.ask(Counter.add, 1) for _ in range(3)]
    gate.wait_started()
    ref.stop(drain=True, wait=False)
    ref.stop(drain=False, wait=False)
    gate.release()
    assert ref.join(20)
    for future in queued:
        with pytest.raises(hx.ActorClosedError):
            future.result()


def test_ask_and_tell_after_stop_raise_closed_error(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)
    ref.stop()
    ref.stop()  # twice is harmless
    with pytest.raises(hx.ActorClosedError):
        ref.ask(Counter.get)
    with pytest.raises(hx.ActorClosedError):
        ref.tell(Counter.add, 1)


def test_stop_from_inside_a_handler_does_not_deadlock(spawn: ActorFactory) -> None:
    ref = spawn(Counter)

    def stop_self(counter: Counter) -> str:
        ref.stop()  # cannot wait for itself: returns, the actor stops after this handler
        return "stopping"

    assert ref.ask(stop_self).result(timeout=20) == "stopping"
    assert ref.join(20)
    assert ref.state == "stopped"


def test_cancelled_ask_is_skipped(spawn: ActorFactory, kind: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind=kind)
    ref.ask(Counter.block, gate.started, gate.release_path)
    if kind == "process":  # only a message still waiting in this process can be cancelled
        ref.ask(Counter.size, b"x" * (1 << 20))  # fills the pipe budget
    skipped = ref.ask(Counter.add, 100)
    gate.wait_started()
    assert skipped.cancel()
    gate.release()
    assert ref.ask(Counter.get).result(timeout=20) == (0 if kind == "thread" else 1 << 20)
    ref.stop()


# ---- kill ------------------------------------------------------------------------------------
def test_kill_process_actor_mid_handler_fails_pending_asks(
    spawn: ActorFactory, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind="process")
    pid = ref.ask(Counter.pid).result(timeout=20)
    running = ref.ask(Counter.block, gate.started, gate.release_path)
    queued = ref.ask(Counter.add, 1)
    gate.wait_started()
    started = time.monotonic()
    ref.kill()
    assert time.monotonic() - started < 5
    assert _dead(pid)
    for future in (running, queued):
        with pytest.raises(hx.ActorBrokenError, match="was killed"):
            future.result(timeout=5)
    assert ref.state == "killed"
    with pytest.raises(hx.ActorBrokenError):
        ref.tell(Counter.add, 1)


def test_kill_process_actor_takes_its_child_processes(spawn: ActorFactory, tmp_path: Path) -> None:
    ref = spawn(Counter, kind="process")
    grandchild = ref.ask(Counter.start_grandchild).result(timeout=20)
    assert psutil.pid_exists(grandchild)
    ref.kill()
    assert wait_until(lambda: _dead(grandchild))


def test_kill_escalates_to_sigkill_when_sigterm_is_ignored(
    spawn: ActorFactory, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind="process")
    pid = ref.ask(Counter.pid).result(timeout=20)
    ref.ask(Counter.ignore_sigterm).result(timeout=20)
    ref.ask(Counter.block, gate.started, gate.release_path)
    gate.wait_started()
    ref.kill()
    assert _dead(pid)


def test_kill_thread_actor_interrupts_a_python_handler(spawn: ActorFactory, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter)
    running = ref.ask(Counter.block, gate.started, gate.release_path)
    queued = ref.ask(Counter.add, 1)
    gate.wait_started()
    ref.kill()
    for future in (running, queued):
        with pytest.raises(hx.ActorBrokenError, match="was killed"):
            future.result(timeout=5)
    assert ref.join(10)  # the handler was interrupted: nobody released the gate
    assert ref.state == "killed"
    with pytest.raises(hx.ActorBrokenError):
        ref.ask(Counter.get)


def test_kill_idle_actor_and_kill_twice(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)
    assert ref.ask(Counter.add, 1).result(timeout=20) == 1
    ref.kill()
    ref.kill()
    assert ref.join(10)
    assert ref.state == "killed"


# ---- supervision -----------------------------------------------------------------------------
@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_actors_process, "BACKOFF_FIRST", 0.01)


@pytest.mark.usefixtures("fast_backoff")
def test_crashed_process_actor_is_restarted_with_a_new_instance(
    spawn: ActorFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    ref = spawn(Counter, 100, kind="process", max_restarts=2, journal=str(journal))
    assert ref.ask(Counter.add, 1).result(timeout=20) == 101
    first_pid = ref.pid
    crash = ref.ask(Counter.crash, 3)
    pending = ref.ask(Counter.add, 1)
    with pytest.raises(hx.ActorBrokenError, match="died") as info:
        crash.result(timeout=20)
    cause = info.value.__cause__
    assert isinstance(cause, hx.WorkerCrashedError)
    assert cause.exitcode == 3
    with pytest.raises(hx.ActorBrokenError):
        pending.result(timeout=20)
    assert ref.ask(Counter.add, 1).result(timeout=20) == 101  # the constructor ran again
    assert ref.restarts == 1
    assert ref.pid not in (None, first_pid)
    assert [line.split()[0] for line in journal.read_text().splitlines()] == ["built"] * 2
    ref.stop()


@pytest.mark.usefixtures("fast_backoff")
def test_messages_sent_during_a_restart_go_to_the_new_instance(spawn: ActorFactory) -> None:
    ref = spawn(Counter, kind="process", max_restarts=1)
    ref.ask(Counter.get).result(timeout=20)
    ref.tell(Counter.crash)
    later = [ref.ask(Counter.add, 1) for _ in range(3)]
    results: list[Any] = []
    for future in later:
        try:
            results.append(future.result(timeout=20))
        except hx.ActorBrokenError:
            results.append("lost")
    # Some may have been in the pipe at the crash; the ones after the restart count from 1.
    answered = [r for r in results if r != "lost"]
    assert answered == list(range(1, len(answered) + 1))
    assert ref.ask(Counter.add, 1).result(timeout=20) == len(answered) + 1
    assert ref.restarts == 1
    ref.stop()


@pytest.mark.usefixtures("fast_backoff")
def test_actor_without_restarts_left_is_broken(spawn: ActorFactory) -> None:
    ref = spawn(Counter, kind="process", max_restarts=1)
    for expected_restarts in (1, 2):
        with pytest.raises(hx.ActorBrokenError):
            ref.ask(Counter.crash).result(timeout=20)
        if expected_restarts == 1:
            assert wait_until(lambda: ref.restarts == 1)
    assert wait_until(lambda: ref.state == "broken")
    with pytest.raises(hx.ActorBrokenError) as info:
        ref.ask(Counter.get)
    assert isinstance(info.value.__cause__, hx.WorkerCrashedError)
    assert ref.join(10)


def test_tells_lost_in_a_crash_go_to_on_error_once_each(spawn: ActorFactory) -> None:
    """A tell pending when the process died failed: on_error hears of it, once per tell."""
    errors: list[BaseException] = []
    ref = spawn(Counter, kind="process", on_error=errors.append)
    ref.ask(Counter.get).result(timeout=20)
    ref.tell(Counter.crash, 3)
    assert ref.join(20)
    assert ref.state == "broken"
    assert len(errors) == 1
    assert isinstance(errors[0], hx.ActorBrokenError)
    assert "died while this message was pending" in str(errors[0])
    cause = errors[0].__cause__
    assert isinstance(cause, hx.WorkerCrashedError)
    assert cause.exitcode == 3


def test_process_killed_from_outside_counts_as_a_crash(spawn: ActorFactory) -> None:
    ref = spawn(Counter, kind="process", max_restarts=1)
    pid = ref.ask(Counter.pid).result(timeout=20)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: ref.restarts == 1 and ref.pid not in (None, pid), 20)
    assert ref.ask(Counter.pid).result(timeout=20) != pid
    ref.stop()


def test_kill_during_restart_backoff_ends_the_actor(
    spawn: ActorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_actors_process, "BACKOFF_FIRST", 30.0)
    ref = spawn(Counter, kind="process", max_restarts=1)
    with pytest.raises(hx.ActorBrokenError):
        ref.ask(Counter.crash).result(timeout=20)
    waiting = ref.ask(Counter.get)  # waits for the restart
    started = time.monotonic()
    ref.kill()
    assert time.monotonic() - started < 5
    with pytest.raises(hx.ActorBrokenError, match="killed"):
        waiting.result(timeout=5)
    assert ref.restarts == 0


# ---- bounded mailbox -------------------------------------------------------------------------
def test_bounded_mailbox_blocks_the_sender_until_there_is_room(
    spawn: ActorFactory, kind: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind=kind, mailbox_size=2)
    ref.tell(Counter.block, gate.started, gate.release_path)
    gate.wait_started()
    ref.tell(Counter.add, 1)
    ref.tell(Counter.add, 1)  # the mailbox is full now
    sent = threading.Event()

    def third() -> None:
        ref.tell(Counter.add, 1)
        sent.set()

    sender = threading.Thread(target=third)
    sender.start()
    assert not sent.wait(0.3)
    gate.release()
    assert sent.wait(20)
    sender.join()
    assert ref.ask(Counter.get).result(timeout=20) == 3
    ref.stop()


def test_sender_blocked_on_a_full_mailbox_wakes_when_stopped(
    spawn: ActorFactory, kind: str, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind=kind, mailbox_size=1)
    ref.tell(Counter.block, gate.started, gate.release_path)
    gate.wait_started()
    ref.tell(Counter.add, 1)
    errors: list[BaseException] = []

    def blocked_sender() -> None:
        try:
            ref.tell(Counter.add, 1)
        except hx.ActorError as exc:
            errors.append(exc)

    sender = threading.Thread(target=blocked_sender)
    sender.start()
    ref.stop(drain=False, wait=False)
    sender.join(20)
    assert [type(e) for e in errors] == [hx.ActorClosedError]
    gate.release()
    assert ref.join(20)


def test_handler_sending_to_its_own_full_mailbox_raises(spawn: ActorFactory) -> None:
    ref = spawn(Counter, mailbox_size=1)

    def flood(counter: Counter) -> str:
        try:
            for _ in range(5):
                ref.tell(Counter.add, 1)
        except hx.ActorError as exc:
            return str(exc)
        return "no error"

    assert "full" in ref.ask(flood).result(timeout=20)
    ref.stop()


def test_large_messages_never_block_an_unbounded_sender(
    spawn: ActorFactory, tmp_path: Path
) -> None:
    gate = Gate(tmp_path)
    ref = spawn(Counter, kind="process")
    ref.tell(Counter.block, gate.started, gate.release_path)
    gate.wait_started()
    payload = b"x" * 100_000
    done = threading.Event()

    def send_many() -> None:
        for _ in range(100):  # 10 MB, far more than the pipe holds
            ref.tell(Counter.size, payload)
        done.set()

    sender = threading.Thread(target=send_many)
    sender.start()
    assert done.wait(20), "a tell blocked behind a busy actor"
    sender.join()
    gate.release()
    assert ref.ask(Counter.get).result(timeout=30) == 100 * len(payload)
    ref.stop()


# ---- futures interoperability ----------------------------------------------------------------
def test_futures_work_with_as_completed_and_asyncio(spawn: ActorFactory, kind: str) -> None:
    ref = spawn(Counter, kind=kind)
    futures = [ref.ask(Counter.add, 1) for _ in range(10)]
    done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=20)}
    assert done == set(range(1, 11))

    async def main() -> list[int]:
        wrapped = [asyncio.wrap_future(ref.ask(Counter.add, 1)) for _ in range(3)]
        return list(await asyncio.gather(*wrapped))

    assert asyncio.run(main()) == [11, 12, 13]
    ref.stop()


# ---- handles, arguments, executor ------------------------------------------------------------
def test_handle_cannot_be_pickled(spawn: ActorFactory) -> None:
    ref = spawn(Counter)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ref)
    assert "Counter" in repr(ref)
    ref.stop()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "fiber"}, ValueError),
        ({"mailbox_size": 0}, ValueError),
        ({"mailbox_size": True}, ValueError),
        ({"max_restarts": -1}, ValueError),
        ({"on_error": 3}, TypeError),
    ],
)
def test_spawn_rejects_bad_options(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        hx.spawn(Counter, **kwargs)


def test_spawn_rejects_a_class_that_cannot_be_pickled_for_a_process() -> None:
    lock = threading.Lock()
    with pytest.raises(hx.SerializationError):
        hx.spawn(Counter, lock, kind="process")


def test_process_actor_runs_with_each_start_method(start_method: str) -> None:
    with hx.Executor(max_processes=1, start_method=start_method) as ex:
        ref = ex.spawn(Counter, 1, kind="process")
        assert ref.ask(Counter.add, 1).result(timeout=30) == 2
        assert ref.ask(Counter.pid).result(timeout=30) != os.getpid()
    assert ref.state == "stopped"


def test_executor_shutdown_stops_its_actors() -> None:
    ex = hx.Executor(max_processes=1)
    refs = [ex.spawn(Counter, kind="thread"), ex.spawn(Counter, kind="process")]
    futures = [ref.ask(Counter.add, 1) for ref in refs]
    ex.shutdown(wait=True)
    assert [f.result() for f in futures] == [1, 1]  # drained first
    assert [ref.state for ref in refs] == ["stopped", "stopped"]
    with pytest.raises(RuntimeError):
        ex.spawn(Counter)


def test_process_actor_dies_with_its_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            sys.path.insert(0, sys.argv[1])
            import hybridexec as hx
            from tests.actor_helpers import Counter

            if __name__ == "__main__":
                ref = hx.spawn(Counter, kind="process")
                print(ref.ask(Counter.pid).result(timeout=30), flush=True)
                time.sleep(60)
            """
        )
    )
    root = str(Path(__file__).resolve().parent.parent)
    parent = subprocess.Popen(
        [sys.executable, str(script), root], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        actor_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(actor_pid)
        parent.kill()
        parent.wait(10)
        assert wait_until(lambda: _dead(actor_pid), 10)
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()


# ---- documentation examples ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("actor_*.py"))


def test_there_are_two_actor_examples() -> None:
    assert [p.name for p in EXAMPLES] == ["actor_database.py", "actor_pipeline.py"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_docs_example_runs(path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_docs_page_shows_the_example_as_it_is(path: Path) -> None:
    assert path.read_text() in (ROOT / "docs" / "actors.md").read_text()


def test_large_numpy_arguments_of_a_process_ask_travel_through_shared_memory() -> None:
    np = pytest.importorskip("numpy")
    ref = hx.spawn(Counter, kind="process")
    try:
        big = np.ones(1 << 18)  # 2 MiB: over the 1 MiB placement threshold
        total, writable = ref.ask(Counter.inspect_array, big).result(timeout=30)
        assert (total, writable) == (float(1 << 18), False)
        small = np.ones(8)
        assert ref.ask(Counter.inspect_array, small).result(timeout=30) == (8.0, True)
    finally:
        ref.stop()
        ref.join(30)
