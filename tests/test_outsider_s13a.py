"""An outside tester's cases for round 13 (tester 13a): actors, the command-queue message pump,
under faults.

Each test names the defect of the tester's report (A1, A2, ...) in its docstring and fails on
main ef22b31 (Python 3.11). Every case runs as a script in a fresh interpreter of its own
session (``tests/scenario.py``), killed with whatever it left on overrun.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenario import run_script

pytestmark = pytest.mark.timeout(30)


_ON_ERROR_FULL_MAILBOX = """
import sys, threading, time
import hybridexec as hx

class Slow:
    def boom(self):
        raise ValueError("boom")

    def wait(self, seconds):
        time.sleep(seconds)
        return seconds

if __name__ == "__main__":
    kind = sys.argv[1]
    holder, seen = {}, []

    def on_error(exc):
        time.sleep(0.3)  # the sender blocked behind boom takes the free place first
        try:
            holder["ref"].tell(Slow.wait, 0.0)  # the mailbox is full now
            seen.append("accepted")
        except BaseException as err:
            seen.append(type(err).__name__)

    ref = hx.spawn(Slow, kind=kind, mailbox_size=1, on_error=on_error)
    holder["ref"] = ref
    ref.tell(Slow.boom)
    answer = ref.ask(Slow.wait, 1.0)
    sender = threading.Thread(target=ref.tell, args=(Slow.wait, 0.0))
    sender.start()  # blocks: the mailbox is full until boom is answered
    try:
        value = answer.result(timeout=4)  # handled after 1 s
    except BaseException as err:
        value = type(err).__name__
    print("ANSWER", value, "ON_ERROR", seen, flush=True)
    ref.kill()
    sender.join(5)
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_on_error_telling_its_own_full_mailbox_raises_instead_of_deadlocking(
    tmp_path: Path, kind: str
) -> None:
    """A1: a process actor's ``on_error`` hook that ``tell``s its own actor while the bounded
    mailbox is full blocks the supervisor thread for good: the supervisor is the only thread
    that frees room (it reads the answers), so no answer is read any more. What a user sees:
    an ``ask`` handled in 1 s is still not done 4 s later (``TimeoutError``), and the actor
    answers nothing until someone stops or kills it. A thread actor raises ``ActorError`` at
    once in the same place (passing case here). docs/actors.md, Bounded mailboxes: "A handler
    sending to its own full mailbox would wait forever, so that raises ``ActorError`` at
    once"; "Deadlocks that raise instead". Cause: ``_actors/_process.py`` ``send`` calls
    ``self.admit(False)``, where ``ThreadCore.send`` passes ``own = self.in_actor()``
    (``ProcessCore.in_actor`` is True exactly on the supervisor thread, where ``on_error``
    runs).
    """
    result = run_script(tmp_path, _ON_ERROR_FULL_MAILBOX, kind, timeout=25)
    assert "ANSWER" in result.stdout, result.stderr[-3000:]
    assert "ANSWER 1.0 ON_ERROR ['ActorError']" in result.stdout, result.stdout


_ON_ERROR_ASKS_ITSELF = """
import sys, time
import concurrent.futures as cf
import hybridexec as hx

class Counter:
    def __init__(self):
        self.n = 0

    def boom(self):
        raise ValueError("boom")

    def incr(self):
        self.n += 1
        return self.n

if __name__ == "__main__":
    kind = sys.argv[1]
    holder, seen = {}, []

    def on_error(exc):
        try:
            seen.append(holder["ref"].ask(Counter.incr).result(timeout=2))
        except cf.TimeoutError:
            seen.append("waited 2 s for itself")
        except BaseException as err:
            seen.append(type(err).__name__)

    ref = hx.spawn(Counter, kind=kind, on_error=on_error)
    holder["ref"] = ref
    ref.tell(Counter.boom)
    after = ref.ask(Counter.incr).result(timeout=10)
    print("ON_ERROR", seen, flush=True)
    ref.kill()
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_on_error_asking_its_own_actor_raises_instead_of_deadlocking(
    tmp_path: Path, kind: str
) -> None:
    """A2: a process actor's ``on_error`` hook (run on its supervisor thread) that asks its own
    actor and waits gets a future that can never end: the answer is read by the very thread
    that waits. With a timeout the user sees ``TimeoutError`` (and the actor answers nothing
    meanwhile); without one, the actor hangs for good. A thread actor's hook gets
    ``ActorError`` at once (passing case here). docs/actors.md, Deadlocks that raise instead:
    "An actor that asks itself ... hybridexec sees it and raises ``ActorError`` at once".
    Cause: ``_actors/_process.py`` ``ProcessCore.send`` has no check of ``self.in_actor()``
    for an ask, where ``_actors/_thread.py`` ``ThreadCore.send`` raises.
    """
    result = run_script(tmp_path, _ON_ERROR_ASKS_ITSELF, kind, timeout=25)
    assert "ON_ERROR" in result.stdout, result.stderr[-3000:]
    assert "ON_ERROR ['ActorError']" in result.stdout, result.stdout


_LOST_TELLS_WARNING = """
import logging, os, time
import hybridexec as hx

class Dies:
    def die(self):
        time.sleep(0.3)
        os._exit(9)

    def note(self, payload):
        pass

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    ref = hx.spawn(Dies, kind="process")  # no on_error, no restarts
    ref.tell(Dies.die)
    for _ in range(200):
        ref.tell(Dies.note, b"z" * 20000)  # most wait in the parent (beyond the pipe budget)
    assert ref.join(15)
    print("STATE", ref.state, flush=True)
"""


def test_one_warning_counts_every_lost_tell(tmp_path: Path) -> None:
    """A3: a process actor without ``on_error`` that dies with 201 tells pending logs two
    warnings, the first of which miscounts: "the process of actor Dies-1 (pid N) exited with
    code 9, 2 tell(s) lost; broken", then "actor Dies-1: 199 queued tell(s) lost". A user
    reading the first (the one that names the crash) believes 2 tells were lost.
    docs/actors.md, Errors: "the process died with tells pending | ... without ``on_error``,
    one warning that counts them". Cause: ``_actors/_supervisor.py`` ``_after_death`` counts
    only the tells in flight (written to the pipe), and ``supervise``'s ``finally`` warns again
    for those still waiting in ``overflow``.
    """
    result = run_script(tmp_path, _LOST_TELLS_WARNING, timeout=25)
    assert "STATE broken" in result.stdout, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "lost" in line]
    assert len(warnings) == 1, warnings
    assert "201 tell(s) lost" in warnings[0], warnings


_FORKED_CHILD_EXITS = """
import os, sys
import hybridexec as hx

class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

if __name__ == "__main__":
    ref = hx.spawn(Counter, kind="process")
    assert ref.ask(Counter.incr).result(timeout=20) == 1
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit of the child: its atexit hooks run
    _, status = os.waitpid(pid, 0)
    print("CHILD", os.waitstatus_to_exitcode(status), flush=True)
    assert ref.ask(Counter.incr).result(timeout=20) == 2
    ref.stop()
"""


def test_forked_child_of_a_parent_with_a_process_actor_exits_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A4: a child made by ``os.fork()`` in a program with a live process actor prints a
    traceback to stderr when it exits normally (``sys.exit(0)``)::

        Exception ignored in atexit callback: <function _exit_function ...>
          File ".../multiprocessing/process.py", line 147, in join
        AssertionError: can only join a child process

    multiprocessing's exit hook joins the actor's ``Process`` object, inherited in
    ``multiprocessing.process._children`` (the same happens with a live process lane worker,
    and with a bare ``multiprocessing.Process``: hybridexec already forgets its actors and
    lanes in a forked child, ``_lifecycle.on_fork``, but not multiprocessing's record of
    them). The exit code stays 0. The brief's expectation for ``os.fork()`` with live actors
    and actors at exit: no traceback; docs/actors.md: "The handle cannot be pickled: an actor
    belongs to the process that spawned it".
    """
    result = run_script(tmp_path, _FORKED_CHILD_EXITS, timeout=25)
    assert "CHILD 0" in result.stdout, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


_THREAD_ACTOR_HANDLER_FORKS = """
import os, time
import hybridexec as hx

class Forker:
    def fork(self):
        pid = os.fork()
        return "child" if pid == 0 else pid  # the child returns, as in the docs' hostile row

if __name__ == "__main__":
    ref = hx.spawn(Forker)
    child = ref.ask(Forker.fork).result(timeout=20)
    ref.stop()
    deadline = time.monotonic() + 5
    ended = False
    while time.monotonic() < deadline:
        done, _ = os.waitpid(child, os.WNOHANG)
        if done:
            ended = True
            break
        time.sleep(0.05)
    print("CHILD_ENDED", ended, flush=True)
    if not ended:
        os.kill(child, 9)
        os.waitpid(child, 0)
"""


def test_child_forked_by_a_thread_actor_handler_does_not_stay_forever(tmp_path: Path) -> None:
    """A5: a thread actor's handler that forks, the child returning from the handler (the case
    docs/hostile-input.md describes for an ``fn`` and a process actor's handler: "The child
    exits as soon as it returns into the worker's loop"), leaves the child process running for
    good: it goes back into the actor's loop (``_actors/_thread.py`` ``serve``), the only
    thread it has, and blocks in ``queue.get()`` forever; it outlives the parent too (an
    orphan that never ends). The same happens with a thread-lane task of the executor
    (``Executor(kind="thread").submit``). Seen: ``CHILD_ENDED False`` 5 s after the fork.
    Guarantee I3 (nothing of ours outlives ...) by analogy; the process actor and process
    worker end such a child (``_actors/_child.py`` ``_exit_if_forked``), the thread actor has
    no equivalent.
    """
    result = run_script(tmp_path, _THREAD_ACTOR_HANDLER_FORKS, timeout=25)
    assert "CHILD_ENDED" in result.stdout, result.stderr[-3000:]
    assert "CHILD_ENDED True" in result.stdout, result.stdout


_ANSWER_IS_ITS_ARGUMENT = """
import numpy as np
import hybridexec as hx

class Echo:
    def same(self, array):
        return array

def same(array):
    return array

if __name__ == "__main__":
    array = np.ones(1 << 18)  # 2 MiB: it travels through shared memory
    ref = hx.spawn(Echo, kind="process")
    answer = ref.ask(Echo.same, array).result(timeout=20)
    ref.stop()
    with hx.Executor(kind="process") as ex:
        result = ex.submit(same, array).result(timeout=20)
    print("TASK", result.flags.writeable, "ACTOR", answer.flags.writeable, flush=True)
    answer[0] = 2.0  # ValueError: assignment destination is read-only
    print("WROTE", answer[0], flush=True)
"""


def test_process_actor_answer_that_is_its_argument_comes_back_writable(tmp_path: Path) -> None:
    """A6: a process actor's ``ask`` whose handler returns its 2 MiB numpy argument (which
    reached it through shared memory, read-only there as documented) gives the asker a
    READ-ONLY array: ``answer[0] = 2.0`` raises ``ValueError: assignment destination is
    read-only``. The same function submitted to the process lane gives a writable array, and
    so does a thread actor. docs/shared-memory.md: "A result array of 1 MiB or more comes back
    the same way. The array you get owns its memory and is writable, like any unpickled
    array, also when the task returns its argument or a view of it"; docs/actors.md says
    read-only only of the arguments the actor receives. (A view ``a[::2]`` comes back
    writable; a fresh array too.) Low severity. Likely cause: ``_actors/_child.py:164``
    pickles the answer with plain ``dumps((OK, value))`` (protocol 5), and numpy puts a
    read-only array's data in a ``PickleBuffer``, which unpickles as a read-only array
    (``pickle.loads(pickle.dumps(ro, 5)).flags.writeable`` is False).
    """
    result = run_script(tmp_path, _ANSWER_IS_ITS_ARGUMENT, timeout=25)
    assert "TASK True" in result.stdout, result.stdout + result.stderr[-3000:]
    assert "TASK True ACTOR True" in result.stdout, result.stdout
    assert "WROTE 2.0" in result.stdout, result.stderr[-3000:]


_CALLBACK_CHAINS_AN_ASK = """
import sys, time
import hybridexec as hx

class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def slow_incr(self):
        time.sleep(0.3)  # the callback is added before the answer: the actor's thread runs it
        return self.incr()

if __name__ == "__main__":
    ref = hx.spawn(Counter, kind=sys.argv[1])
    seen = []

    def chain(first):
        try:
            second = ref.ask(Counter.incr)  # the next step, not waited for: no deadlock
            second.add_done_callback(lambda f: seen.append(f.result()))
            seen.append(first.result())
        except BaseException as err:
            seen.append(type(err).__name__)

    ref.ask(Counter.slow_incr).add_done_callback(chain)
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    print("SEEN", sorted(map(str, seen)), flush=True)
    ref.stop()
"""


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_done_callback_of_an_ask_may_ask_the_same_actor(tmp_path: Path, kind: str) -> None:
    """A7: a done-callback added to a thread actor's ``ask`` future that chains the next ask to
    the same actor (without waiting for it: no deadlock possible) gets ``ActorError: actor
    Counter-1 asked itself from inside a handler`` and the chain stops. The user wrote no
    handler: the callback runs on the actor's thread because that thread settles the future,
    and ``ThreadCore.send`` (``_actors/_thread.py``) treats any ask made on that thread as a
    handler asking itself. A process actor accepts the same chain (passing case here: its
    callbacks run on callback threads). docs/actors.md: the futures are ``concurrent.futures``
    futures and "``add_done_callback`` ... work as usual"; the self-ask error is documented
    only for "an actor that asks itself from inside a handler".
    """
    result = run_script(tmp_path, _CALLBACK_CHAINS_AN_ASK, kind, timeout=25)
    assert "SEEN" in result.stdout, result.stderr[-3000:]
    assert "SEEN ['1', '2']" in result.stdout, result.stdout


_BIG_MESSAGE_DURING_CONSTRUCTOR = """
import threading, time
import hybridexec as hx

class Model:
    def __init__(self):
        time.sleep(10)  # loads a model, opens a connection...

    def predict(self, data):
        return len(data)

    def ping(self):
        return "pong"

def within(seconds, action):
    box = []
    thread = threading.Thread(target=lambda: box.append(action()), daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()

if __name__ == "__main__":
    ref = hx.spawn(Model, kind="process")  # unbounded mailbox: "senders never block"
    time.sleep(0.5)
    threading.Thread(target=ref.ask, args=(Model.predict, b"x" * 20_000_000), daemon=True).start()
    time.sleep(0.5)
    print("TELL", within(2, lambda: ref.tell(Model.ping)), flush=True)
    print("STOP", within(2, lambda: ref.stop(wait=False)), flush=True)
    ref.kill()
"""


def test_senders_and_stop_do_not_block_while_the_constructor_runs(tmp_path: Path) -> None:
    """A8: while a process actor's constructor runs (a model loading, a connection opening),
    one ``ask`` whose message is larger than the pipe (20 MB of bytes) blocks in its write
    holding the actor's lock, and so every other ``tell``/``ask`` from any thread and even
    ``stop(wait=False)`` block until the constructor returns (forever if it hangs): here a
    small ``tell`` and ``stop(wait=False)`` are both still blocked after 2 s, in a 10 s
    constructor. docs/actors.md: "With ``mailbox_size=None`` (the default) senders never
    block: a message that does not fit in a process actor's pipe waits in your process until
    it does"; "A bounded stop: ``ref.stop(wait=False); ref.join(5) or ref.kill()``"; How it
    works: "a write never blocks". Cause: ``_actors/_process.py`` ``send`` writes a message
    directly when nothing is in flight (``not self.inflight_bytes``), whatever its size,
    with ``self.lock`` held, and the child reads nothing before its constructor returns (the
    ``kill`` docstring there knows of this case). The same holds for the supervisor's
    ``_flush`` after a restart, whose constructor runs again.
    """
    result = run_script(tmp_path, _BIG_MESSAGE_DURING_CONSTRUCTOR, timeout=25)
    assert "TELL" in result.stdout, result.stderr[-3000:]
    assert "TELL True" in result.stdout, result.stdout
    assert "STOP True" in result.stdout, result.stdout
