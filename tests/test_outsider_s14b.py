"""An outside tester's cases for round 14 (tester 14b): what crosses the process boundary and
what fails crossing it, as docs/guarantees.md, docs/hostile-input.md, docs/actors.md and
docs/api.md promise.

Each test names the defect of the tester's report (B1, B2, ...) in its docstring and fails on
main 3cf623e (Python 3.11).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hybridexec as hx

from .scenario import run_script

pytestmark = pytest.mark.timeout(30)

_MISSING = "hx14b_a_module_no_worker_can_import"


class _MissingInWorkers:
    """Pickles fine; unpickling imports a module that does not exist (``__reduce__`` to a
    missing module): ``ModuleNotFoundError`` in the worker."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (importlib.import_module, (_MISSING,))


def _identity(x: Any) -> Any:
    return x


def _consume(values: Iterator[Any], into: list[Any]) -> None:
    for value in values:
        into.append(value)


def _items(bad_at: int, n: int = 20) -> list[Any]:
    items: list[Any] = list(range(n))
    items[bad_at] = _MissingInWorkers()
    return items


def test_map_item_whose_argument_fails_to_unpickle_keeps_the_list_length() -> None:
    """B1: in ``hx.map``/``imap``/``amap`` with ``return_exceptions=True`` on processes, one
    item whose argument fails to unpickle in the worker makes the map return FEWER results
    than items: its whole batch (``chunksize`` items, or the map's own batch size) comes
    back as ONE ``SerializationError``, so with 20 items and ``chunksize=5`` the list has 16
    entries and every result after the batch sits at the wrong index (``rs[7]`` is the value
    of item 11). With 40 items and automatic batches: 36. Claim: ``hx.map`` "return[s] the
    list of results" of ``fn`` applied "to every item", each exception "in its item's
    place" (``return_exceptions``; docs/api.md); docs/hostile-input.md (argument that fails
    to unpickle: ``SerializationError``, "the worker lives on"). Cause: the worker's
    ``_process/_worker.py`` ``_run`` answers a batch whose message will not unpickle with a
    single outcome (``return [(False, pack_exception(err))], 0.0, 0.0``), which the parent
    (``_replies.py``, ``task.batch``) settles as the batch's outcome list as it is; the
    parent's own unpickling failure repeats the error ``len(task.items)`` times, and the
    remote lane's ``outcomes_to_future`` does the same.
    """
    with hx.Executor(max_processes=2) as ex:
        process = ex.options(kind="process")
        results = hx.map(
            _identity, _items(7), executor=process, return_exceptions=True, chunksize=5
        )
        lazily = list(
            hx.imap(_identity, _items(7), executor=process, return_exceptions=True, chunksize=5)
        )
        assert process.submit(_identity, "after").result(timeout=20) == "after"
    for got in (results, lazily):
        assert len(got) == 20, got
        assert isinstance(got[7], hx.SerializationError), got
        for index, value in enumerate(got):
            assert value == index or isinstance(value, hx.SerializationError), got


def test_map_item_whose_argument_fails_to_unpickle_fails_alone() -> None:
    """B2: the same batch failure takes the bad item's neighbours with it: in ``hx.map``
    with ``return_exceptions=True`` the 4 good items that shared its batch never run and get
    no value (B1 drops even their places), and without ``return_exceptions`` ``hx.imap``
    raises the ``SerializationError`` before yielding the good items ahead of the culprit
    in its batch (bad item 3 of 40: only 2 values came first). Everything else about a
    batch is per item: an argument that cannot be pickled in the parent, a result that will
    not pickle, ``sys.exit`` ("In a batch ..., only that item fails"), a crash ("only the
    culprit fails"; the others are retried item by item) - docs/hostile-input.md,
    docs/guarantees.md. Expected: the batch's message is unpickled item by item (or the
    batch retried item by item), so only the culprit fails.
    """
    with hx.Executor(max_processes=2) as ex:
        process = ex.options(kind="process")
        results = hx.map(
            _identity, _items(7), executor=process, return_exceptions=True, chunksize=5
        )
        before: list[Any] = []
        with pytest.raises(hx.SerializationError):
            _consume(hx.imap(_identity, _items(3, 40), executor=process), before)
    assert [r for i, r in enumerate(results) if i != 7] == [i for i in range(20) if i != 7]
    assert before == [0, 1, 2]


class _Rebuilt(Exception):
    """An exception that pickles and unpickles in the worker, but whose rebuilding in the
    parent (the process that made no worker) raises ``kind``."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_rebuild, (self.kind,))


def _rebuild(kind: str) -> BaseException:
    if multiprocessing.parent_process() is None:  # the test's own process
        raise SystemExit(3) if kind == "SystemExit" else ValueError("no rebuild here")
    return _Rebuilt.__new__(_Rebuilt)


class _Raiser:
    def __init__(self) -> None:
        self.calls = 0

    def fail(self, kind: str) -> None:
        self.calls += 1
        raise _Rebuilt(kind)

    def count(self) -> int:
        self.calls += 1
        return self.calls


def test_tell_whose_exception_raises_system_exit_when_rebuilt_leaves_the_actor_working() -> None:
    """B3: a process actor's ``tell`` whose handler raised an exception that cannot be
    rebuilt in the parent because its unpickling raises ``SystemExit`` (a ``__reduce__`` or
    ``__setstate__`` calling ``sys.exit``) BREAKS the actor: the supervisor thread dies
    (logged "the supervisor of actor ... failed", ``SystemExit: 3``), every later ``ask``
    fails with ``ActorBrokenError`` (cause ``SystemExit``) and ``on_error`` gets an
    ``ActorBrokenError`` instead of the tell's error. With a ``ValueError`` in the same place
    the actor goes on and ``on_error`` gets a ``SerializationError``. Claim: docs/actors.md
    "Errors": "a tell handler raised | on_error(exc) ... | goes on". Cause:
    ``_serialize.py`` ``unpack_exception`` catches only ``Exception`` around
    ``pickle.loads``; the supervisor (``_actors/_supervisor.py`` ``_answer``: ``value =
    exception_of(value)  # a tell's``) calls it on its own thread, unguarded. The
    executor's lanes catch ``BaseException`` there (``_rebuild.py`` ``_rebuild_failure``).
    """
    errors: list[BaseException] = []
    ref = hx.spawn(_Raiser, kind="process", on_error=errors.append)
    try:
        assert ref.ask(_Raiser.count).result(timeout=20) == 1
        ref.tell(_Raiser.fail, "SystemExit")
        try:
            after = ref.ask(_Raiser.count).result(timeout=20)
        except hx.ActorError as exc:
            pytest.fail(f"the actor broke: {exc!r} (cause {exc.__cause__!r})")
        assert after == 3
        assert len(errors) == 1
        assert isinstance(errors[0], hx.SerializationError), errors
    finally:
        ref.stop(wait=False)
        assert ref.join(10)


def test_ask_whose_exception_raises_system_exit_when_rebuilt_fails_with_serialization_error() -> (
    None
):
    """B4: a process actor's ``ask`` whose handler raised an exception whose unpickling in
    the parent raises ``SystemExit``: ``result()`` raises that bare ``SystemExit(3)`` (no
    cause), as if the caller had asked to exit - in a worker thread it silently ends the
    thread. The same exception from an executor's process task gives ``SerializationError:
    cannot unpickle the exception raised by a task: SystemExit(3)`` (the lane catches
    ``BaseException``: "SystemExit from a __setstate__: still the call's failure"), and an
    actor's *answer* that will not unpickle gives ``SerializationError: an answer of actor
    ... would not unpickle`` even for ``SystemExit``. Claims: docs/hostile-input.md (every
    bad result or exception "ends in a value or a precise exception"), docs/api.md
    (``SerializationError``: "a task, its arguments or its result cannot be ... unpickled").
    Cause: ``_actors/_supervisor.py`` ``_decode`` (reader) calls ``exception_of`` ->
    ``_serialize.py`` ``unpack_exception``, which catches only ``Exception``.
    """
    ref = hx.spawn(_Raiser, kind="process")
    try:
        future = ref.ask(_Raiser.fail, "SystemExit")
        try:
            future.result(timeout=20)
        except hx.SerializationError:
            pass
        except BaseException as exc:
            pytest.fail(f"result() raised {exc!r}, not SerializationError")
        assert ref.ask(_Raiser.count).result(timeout=20) == 2
    finally:
        ref.stop(wait=False)
        assert ref.join(10)
    with hx.Executor(max_processes=1) as ex:  # the executor's lane: as expected
        task = ex.options(kind="process").submit(_Raiser().fail, "SystemExit")
        with pytest.raises(hx.SerializationError):
            task.result(timeout=20)


class _ApiError(Exception):
    """An exception whose attributes come from its payload (a client library's style): a
    missing one raises ``KeyError``, not ``AttributeError``."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.data = data

    def __getattr__(self, name: str) -> Any:
        return self.data[name]


def _raise_api_error(i: int = 0) -> int:
    if i == 2 or i == 0:
        raise _ApiError({"status": 404})
    return i


class _ApiActor:
    def call(self) -> int:
        return _raise_api_error()

    def ping(self) -> str:
        return "pong"


def test_exception_whose_getattr_raises_comes_back_and_the_worker_lives() -> None:
    """B5: a process task that raises an exception whose ``__getattr__`` raises something
    other than ``AttributeError`` for a missing name (here ``KeyError``: attributes looked
    up in a payload dict, a client library's style) KILLS its worker: the future fails with
    ``WorkerCrashedError: the worker process (pid N) running this task exited with code 1``
    and the worker is replaced; in a ``map`` batch the item gets ``WorkerCrashedError``.
    On the thread lane the same call raises the ``_ApiError`` itself, and the exception
    pickles and unpickles fine. Claims: ``_serialize.pack_exception`` ("Pickle an exception
    with its formatted traceback; never raises"; an exception that will not travel becomes a
    ``SerializationError`` naming it), docs/api.md ("Exceptions raised by a task in a worker
    process come back as themselves"), docs/hostile-input.md (``WorkerCrashedError`` is for
    an ``fn`` that kills its worker). Cause: ``_serialize.py:226``
    ``traceback.format_exception(...)`` runs outside the ``try`` of ``pack_exception``; the
    traceback module's ``getattr(exc, '__notes__', None)`` lets the ``KeyError`` through,
    and it escapes the worker's ``except BaseException`` handler in ``_worker.py`` ``_run``.
    (``ProcessPoolExecutor`` breaks its whole pool here: hybridexec at least replaces the
    worker, but promises more.)
    """
    with hx.Executor(max_processes=1) as ex:
        process = ex.options(kind="process")
        future = process.submit(_raise_api_error)
        with pytest.raises(_ApiError):
            future.result(timeout=20)
        first = process.submit(os.getpid).result(timeout=20)
        batch = hx.map(_raise_api_error, range(1, 5), executor=process, return_exceptions=True)
        assert isinstance(batch[1], _ApiError), batch
        assert process.submit(os.getpid).result(timeout=20) == first


def test_actor_handler_raising_an_exception_whose_getattr_raises_does_not_kill_the_actor() -> None:
    """B5 (process actors): the same exception raised by a process actor's handler kills the
    actor's process: the ask fails with ``ActorBrokenError: actor ... died while this message
    was pending`` and, with no restarts asked for, the actor is broken for good ("is broken;
    it takes no more messages"). Claim: docs/actors.md "Errors": "an ``ask`` handler raised
    | its future (``result()`` raises it ...) | goes on". Same cause (``pack_exception``).
    """
    ref = hx.spawn(_ApiActor, kind="process")
    try:
        with pytest.raises(_ApiError):
            ref.ask(_ApiActor.call).result(timeout=20)
        assert ref.ask(_ApiActor.ping).result(timeout=20) == "pong"
    finally:
        ref.stop(wait=False)
        assert ref.join(10)


_DASK_HELPERS = """
import multiprocessing


class Unrebuildable(Exception):
    def __reduce__(self):
        return (rebuild, ())


def rebuild():
    if multiprocessing.parent_process() is None:  # the script itself, not a Dask worker
        raise SystemExit(3)  # a __setstate__ / __reduce__ that calls sys.exit
    return Unrebuildable.__new__(Unrebuildable)


def fails():
    raise Unrebuildable()


def plus_one(x):
    return x + 1
"""

_DASK_SCRIPT = """
import logging
import distributed
import hybridexec as hx
from hx14b_helpers import fails, plus_one

if __name__ == "__main__":
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, set_as_default=False)
    ex = hx.Executor(backend=client, max_processes=1)
    remote = ex.options(kind="process")
    print("WARM", remote.submit(plus_one, 1).result(timeout=15), flush=True)
    try:
        remote.submit(fails).result(timeout=6)
    except hx.SerializationError:
        print("FAILED SerializationError", flush=True)
    except TimeoutError:
        print("FAILED never", flush=True)
    except BaseException as exc:
        print("FAILED", type(exc).__name__, flush=True)
    try:
        print("NEXT", remote.submit(plus_one, 2).result(timeout=4), flush=True)
    except TimeoutError:
        print("NEXT never", flush=True)
    ex.shutdown(wait=False, cancel_futures=True)
    client.close()
    cluster.close()
    print("END", flush=True)
"""


def test_dask_task_whose_exception_exits_when_rebuilt_does_not_wedge_the_lane(
    tmp_path: Path,
) -> None:
    """B6: on the Dask backend, a task that raised an exception whose unpickling in the
    parent raises ``SystemExit`` (a ``__reduce__``/``__setstate__`` calling ``sys.exit``)
    never ends: its future stays pending for good (waited 40 s), and so does every later
    call of the executor (``NEXT never``); nothing is logged. The same exception on the
    local process lane gives ``SerializationError: cannot unpickle the exception raised by a
    task: SystemExit(3)``. Guarantee I1 ("Every submitted task ends exactly once ... within
    a bound"), docs/distributed.md (the backend "keeps its own contract on top of" the
    engine). Cause: ``_backends/_dask.py`` ``_collect`` guards ``_deliver`` with ``except
    Exception`` ("never let the collector die: futures would hang"); ``_wire.py``
    ``outcomes_to_future`` -> ``_serialize.py`` ``unpack_exception`` lets the
    ``SystemExit`` through, and the collector thread ends silently (same root as B3/B4).
    Run in a script: the wedged executor cannot be shut down with ``wait=True``.
    """
    (tmp_path / "hx14b_helpers.py").write_text(_DASK_HELPERS, encoding="utf-8")
    result = run_script(tmp_path, _DASK_SCRIPT, timeout=27)
    output = result.stdout[-2000:] + result.stderr[-3000:]
    assert "WARM 2" in result.stdout, output
    assert "FAILED SerializationError" in result.stdout, output
    assert "NEXT 3" in result.stdout, output
