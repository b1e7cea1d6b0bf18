"""Shared memory: SharedBuffer, SharedArray, SharedList, the janitor and automatic placement."""

from __future__ import annotations

import concurrent.futures
import gc
import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from multiprocessing.shared_memory import ShareableList
from pathlib import Path
from typing import Any

import pytest

import hybridexec
from hybridexec import (
    Executor,
    SharedArray,
    SharedBuffer,
    SharedList,
    SharedMemoryError,
    WorkerCrashedError,
)
from hybridexec._process._wire import encode_call
from hybridexec._shm import (
    DEFAULT_THRESHOLD,
    SHM_DIR,
    Placement,
    Segment,
    free_bytes,
    mapping_of,
    owner_pid_of,
)
from hybridexec._shm._names import identity as owner_identity

from .conftest import wait_until

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


# ---- functions run in workers --------------------------------------------------------------
def fill_array(shared: SharedArray, value: float) -> None:
    shared.array[:] = value


def fill_buffer(shared: SharedBuffer, data: bytes) -> None:
    shared.buf[: len(data)] = data


def set_items(shared: SharedList, values: list[Any]) -> None:
    for i, value in enumerate(values):
        shared[i] = value


def read_items(shared: SharedList) -> list[Any]:
    return shared.tolist()


def array_sum(array: Any) -> float:
    return float(array.sum())


def shared_sum(shared: SharedArray) -> float:
    return float(shared.array.sum())


def describe(array: Any) -> tuple[bool, bool, str]:
    """Whether the array arrived writable, whether its memory is a mapping, its dtype."""
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return bool(array.flags.writeable), type(base).__name__ == "mmap", str(array.dtype)


def try_write(array: Any) -> str:
    try:
        array[0] = 1
    except ValueError as exc:
        return str(exc)
    return "written"


def write_first(array: Any, value: float) -> None:
    array[0] = value


def identity(value: Any) -> Any:
    return value


def slow_sum(array: Any, seconds: float) -> float:
    time.sleep(seconds)  # keeps every task in flight while the test submits the others
    return float(array.sum())


def doubled(array: Any) -> Any:
    return array * 2


def make_shared(n: int) -> SharedArray:
    shared = SharedArray.zeros(n)
    shared.array[:] = 3.0
    return shared


def kept_mappings() -> list[str]:
    from hybridexec._shm import _kept

    return sorted(name for _, name, _ in _kept.kept.values())


class Filler:
    """A process actor that writes into the shared arrays it is sent."""

    def fill(self, shared: SharedArray, value: float) -> float:
        shared.array[:] = value
        return float(shared.array.sum())


def sum_then_die(shared: SharedArray) -> None:
    shared.array.sum()
    os.kill(os.getpid(), signal.SIGKILL)


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def np() -> Any:
    return pytest.importorskip("numpy")


@pytest.fixture
def process_ex() -> Iterator[Any]:
    """Two worker processes; every call goes to a process."""
    ex = Executor(max_processes=2, kind="process")
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ---- segments: names, permissions, space, close ---------------------------------------------
def test_segment_names_carry_the_owner_pid_and_are_unguessable() -> None:
    with SharedBuffer(16) as first, SharedBuffer(16) as second:
        assert owner_pid_of(first.name) == os.getpid()
        assert first.name.startswith(f"hx{os.getpid()}_")
        assert first.name != second.name
        random, _, tag = first.name.split("_")[1].partition("t")
        assert len(random) == 16  # 64 random bits
        if sys.platform.startswith("linux"):  # then the owner's identity (namespace, start)
            assert len(tag) == 8
            assert tag == owner_identity(os.getpid())


def test_segments_are_readable_by_their_owner_only() -> None:
    with SharedBuffer(16) as shared:
        mode = os.stat(os.path.join(SHM_DIR, shared.name)).st_mode
        assert stat.S_IMODE(mode) & 0o077 == 0


def test_buffer_reads_back_what_was_written_and_close_unlinks() -> None:
    shared = SharedBuffer(8)
    shared.buf[:] = b"abcdefgh"
    assert bytes(shared.buf) == b"abcdefgh"
    assert len(shared) == shared.nbytes == 8
    assert _exists(shared.name)
    shared.close()
    assert not _exists(shared.name)
    assert shared.closed
    shared.close()  # twice is harmless


def test_zero_byte_buffer_is_allowed() -> None:
    with SharedBuffer(0) as shared:
        assert bytes(shared.buf) == b""


def test_negative_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        SharedBuffer(-1)


def test_use_after_close_raises_a_clear_error() -> None:
    shared = SharedBuffer(8)
    shared.close()
    with pytest.raises(SharedMemoryError, match="closed"):
        shared.buf  # noqa: B018
    with pytest.raises(SharedMemoryError, match="closed"):
        pickle.dumps(shared)
    items = SharedList([1, 2])
    items.close()
    with pytest.raises(SharedMemoryError, match="closed"):
        items[0]


def test_array_view_outlives_close_without_crashing(np: Any) -> None:
    shared = SharedArray.from_numpy(np.arange(1000.0))
    view = shared.array[10:20]
    shared.close()
    assert not _exists(shared.name)  # the name is gone at once ...
    assert view.sum() == sum(range(10, 20))  # ... the memory lives while a view does
    view[0] = -1.0
    assert view[0] == -1.0
    with pytest.raises(SharedMemoryError, match="closed"):
        shared.array  # noqa: B018


def test_buffer_memoryview_outlives_close_without_crashing() -> None:
    shared = SharedBuffer(4)
    view = shared.buf
    view[:] = b"wxyz"
    shared.close()
    assert bytes(view) == b"wxyz"


def test_owner_handle_collected_without_close_unlinks() -> None:
    shared = SharedBuffer(8)
    name = shared.name
    del shared
    gc.collect()
    assert not _exists(name)


def test_not_enough_space_raises_shared_memory_error_with_the_sizes() -> None:
    free = free_bytes()
    assert free is not None
    asked = free + (1 << 30)
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(SharedMemoryError) as caught:
        SharedBuffer(asked)
    message = str(caught.value)
    assert f"{asked:,} bytes" in message
    assert "free" in message
    assert set(os.listdir(SHM_DIR)) <= before  # nothing half-made was left behind


def test_attaching_a_missing_segment_raises_shared_memory_error() -> None:
    with pytest.raises(SharedMemoryError, match="owner closed it or exited"):
        SharedBuffer.attach(f"hx{os.getpid()}_0000000000000000")


def test_attach_by_name_does_not_take_ownership() -> None:
    with SharedBuffer(4) as shared:
        other = SharedBuffer.attach(shared.name)
        other.buf[:] = b"1234"
        assert not other.owner
        other.close()
        assert _exists(shared.name)  # only the owner unlinks
        assert bytes(shared.buf) == b"1234"


# ---- pickling by name ---------------------------------------------------------------------
def test_pickles_are_small_for_any_array(np: Any) -> None:
    with SharedArray.zeros((64, MiB // 8)) as big, SharedArray.zeros((), "u1") as tiny:
        for shared in (big, tiny):
            assert len(pickle.dumps(shared)) < 4096
    # Automatic placement: a 64 MiB plain array crosses to a worker in a few hundred bytes.
    placement = Placement()
    payload = encode_call(array_sum, [((np.ones(8 * MiB),), {})], False, placement, None)
    assert len(payload) < 4096
    placement.close()


def test_unpickling_in_the_owner_process_shares_the_same_memory(np: Any) -> None:
    with SharedArray.zeros(4, "int64") as shared:
        copy = pickle.loads(pickle.dumps(shared))
        copy.array[1] = 5
        assert shared.array[1] == 5
        assert not copy.owner
        copy.close()
        assert _exists(shared.name)


# ---- across processes -----------------------------------------------------------------------
def test_writes_in_a_worker_are_seen_in_the_parent(np: Any, start_method: str) -> None:
    with (
        Executor(max_processes=1, start_method=start_method, kind="process") as ex,
        SharedArray.zeros((100, 100), "float32") as array,
        SharedBuffer(16) as buffer,
        SharedList([0, "", b""], slot_size=16) as items,
    ):
        ex.submit(fill_array, array, 7.0).result()
        ex.submit(fill_buffer, buffer, b"from the worker").result()
        ex.submit(set_items, items, [42, "wörker ✓", b"x\x00\x00"]).result()
        assert float(array.array.sum()) == 7.0 * 100 * 100
        assert bytes(buffer.buf[:15]) == b"from the worker"
        assert items.tolist() == [42, "wörker ✓", b"x\x00\x00"]


def test_worker_exit_leaves_the_owners_segment_valid(np: Any) -> None:
    # CPython issue 82300: a tracked attach destroys the segment when the worker exits.
    with (
        Executor(max_processes=1, max_tasks_per_child=1, kind="process") as ex,
        SharedArray.zeros(1000) as shared,
    ):
        ex.submit(fill_array, shared, 1.0).result()
        assert wait_until(lambda: not ex.worker_pids)  # the worker that attached it exited
        assert _exists(shared.name)
        ex.submit(fill_array, shared, 2.0).result()  # a new worker attaches it again
        assert float(shared.array.sum()) == 2000.0


def test_sigkill_of_a_worker_leaves_the_owners_segment_valid(np: Any) -> None:
    with Executor(max_processes=1, kind="process") as ex, SharedArray.zeros(1000) as shared:
        shared.array[:] = 1.0
        with pytest.raises(WorkerCrashedError):
            ex.submit(sum_then_die, shared).result()
        assert _exists(shared.name)
        assert ex.submit(array_sum, shared.array).result() == 1000.0


def test_shared_list_keeps_trailing_nuls_and_multibyte_text() -> None:
    values: list[Any] = [b"ab\x00\x00", "héllo wörld ✓", "", b"", None, True, False, 3, 2.5]
    with SharedList(values) as items:
        assert items.tolist() == values
        assert [type(v) for v in items] == [type(v) for v in values]
        assert pickle.loads(pickle.dumps(items)).tolist() == values
    # The standard library's ShareableList loses the NULs (documented here, not fixed there).
    stdlib = ShareableList([b"ab\x00\x00"])
    try:
        assert stdlib[0] == b"ab"
    finally:
        stdlib.shm.close()
        stdlib.shm.unlink()


def test_shared_list_items_round_trip_through_a_worker(process_ex: Executor) -> None:
    values: list[Any] = [b"\x00\x01\x00", "日本語", -(2**70), 1.5, None]
    with SharedList(values) as items:
        assert process_ex.submit(read_items, items).result() == values


def test_shared_list_refuses_a_value_larger_than_its_slot() -> None:
    with SharedList(["ab", 1]) as items:
        items[0] = "12345678"  # a slot holds at least 8 bytes
        with pytest.raises(ValueError, match="slot_size"):
            items[0] = "123456789"
        assert items[0] == "12345678"
    with SharedList(["ab"], slot_size=100) as roomy:
        roomy[0] = "x" * 100
        assert roomy.capacity(0) >= 100


def test_shared_list_behaves_as_a_sequence() -> None:
    with SharedList([1, 2, 3, 2]) as items:
        assert len(items) == 4
        assert items[-1] == 2
        assert items[1:3] == [2, 3]
        assert items.index(3) == 2
        assert items.count(2) == 2
        assert 3 in items
        with pytest.raises(IndexError):
            items[4]
        with pytest.raises(TypeError):
            SharedList([object()])  # type: ignore[list-item]


# ---- ownership handed over ------------------------------------------------------------------
def test_a_handle_created_in_a_worker_is_handed_to_the_parent(np: Any) -> None:
    with Executor(max_processes=1, max_tasks_per_child=1, kind="process") as ex:
        shared = ex.submit(make_shared, 1000).result()
        assert shared.owner
        assert owner_pid_of(shared.name) == os.getpid()  # renamed: the janitor spares it
        assert wait_until(lambda: not ex.worker_pids)  # the worker that made it is gone
        assert shared.name not in hybridexec.cleanup_shared_memory()
        assert float(shared.array.sum()) == 3000.0
        name = shared.name
        shared.close()
        assert not _exists(name)


# ---- the janitor ----------------------------------------------------------------------------
OWNER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy
    import hybridexec
    array = hybridexec.SharedArray.from_numpy(numpy.arange(10.0))
    buffer = hybridexec.SharedBuffer(100)
    items = hybridexec.SharedList(["x"])
    print(array.name, buffer.name, items.name, flush=True)
    sys.stdin.read()  # wait to be killed
    """
)


def test_janitor_removes_segments_of_a_sigkilled_process_group(np: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so killing it spares the test runner
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        names = proc.stdout.readline().split()
        assert len(names) == 3
        assert all(_exists(n) for n in names)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
    assert all(_exists(n) for n in names)  # nothing ran to unlink them
    removed = hybridexec.cleanup_shared_memory()
    assert set(names) <= set(removed)
    assert not any(_exists(n) for n in names)


def test_janitor_leaves_segments_of_live_owners_alone() -> None:
    with SharedBuffer(8) as shared:
        assert shared.name not in hybridexec.cleanup_shared_memory()
        assert _exists(shared.name)


def test_janitor_ignores_names_it_did_not_make() -> None:
    foreign = os.path.join(SHM_DIR, "hx_not_ours_test")
    fd = os.open(foreign, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    try:
        assert "hx_not_ours_test" not in hybridexec.cleanup_shared_memory()
        assert os.path.exists(foreign)
    finally:
        os.unlink(foreign)


# ---- automatic placement ----------------------------------------------------------------------
def test_large_arrays_arrive_read_only_through_shared_memory(np: Any, process_ex: Executor) -> None:
    array = np.ones(2 * MiB // 8)
    writable, mapped, dtype = process_ex.submit(describe, array).result()
    assert (writable, mapped, dtype) == (False, True, "float64")
    assert "read-only" in process_ex.submit(try_write, array).result()
    assert array[0] == 1.0


def test_small_arrays_are_pickled_by_value(np: Any, process_ex: Executor) -> None:
    array = np.ones(DEFAULT_THRESHOLD // 8 - 1)
    writable, mapped, _ = process_ex.submit(describe, array).result()
    assert writable
    assert not mapped


def test_threshold_none_switches_placement_off(np: Any) -> None:
    with Executor(max_processes=1, kind="process", shm_threshold=None) as ex:
        writable, mapped, _ = ex.submit(describe, np.ones(2 * MiB // 8)).result()
        assert writable
        assert not mapped
        result = ex.submit(doubled, np.ones(2 * MiB // 8)).result()
        assert describe(result)[1] is False  # results came back pickled too


def test_threshold_is_configurable(np: Any) -> None:
    with Executor(max_processes=1, kind="process", shm_threshold=1024) as ex:
        writable, mapped, _ = ex.submit(describe, np.ones(256)).result()
        assert (writable, mapped) == (False, True)
        assert describe(ex.submit(doubled, np.ones(256)).result())[1]  # the result too
    with pytest.raises(ValueError, match="negative"):
        Executor(shm_threshold=-1)
    with pytest.raises(TypeError):
        Executor(shm_threshold="1")  # type: ignore[arg-type]


def test_the_same_array_to_many_tasks_is_placed_once_and_freed_after_the_last(
    np: Any, process_ex: Executor
) -> None:
    array = np.arange(MiB, dtype=np.float64)
    placement = process_ex._router.processes.placement
    futures = [process_ex.submit(slow_sum, array, 0.3) for _ in range(6)]
    assert [f.result() for f in futures] == [float(array.sum())] * 6
    assert placement.stats["placed"] == 1
    assert placement.stats["reused"] == 5
    assert wait_until(lambda: not placement._placed)  # released when the last task ended
    assert placement.pooled_bytes >= array.nbytes  # kept for reuse until shutdown ...
    process_ex.shutdown(wait=True)
    assert placement.pooled_bytes == 0  # ... then freed
    assert not [n for n in os.listdir(SHM_DIR) if owner_pid_of(n) == os.getpid()]


def test_a_changed_array_is_placed_again(np: Any) -> None:
    placement = Placement()
    array = np.zeros(MiB // 4)
    futures: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in "ab"]
    first = encode_call(array_sum, [((array,), {})], False, placement, futures[0])
    second = encode_call(array_sum, [((array,), {})], False, placement, futures[1])
    array[:] = 1.0  # changed while the tasks above still hold their copy
    third = encode_call(array_sum, [((array,), {})], False, placement, None)
    assert placement.stats["placed"] == 2
    assert placement.stats["reused"] == 1
    assert pickle.loads(first)[1][0][0][0][0] == 0.0
    assert pickle.loads(second)[1][0][0][0][0] == 0.0
    assert pickle.loads(third)[1][0][0][0][0] == 1.0
    for future in futures:
        future.set_result(None)
    placement.close()


def test_an_array_changed_anywhere_in_flight_is_placed_again(np: Any) -> None:
    # I2: one changed element, wherever it is, makes the next task get a copy of its own.
    placement = Placement()
    array = np.zeros(MiB // 8 + 3)  # a length that is not a multiple of the compare chunk
    futures: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in "ab"]
    first = encode_call(array_sum, [((array,), {})], False, placement, futures[0])
    array[-1] = 7.0
    second = encode_call(array_sum, [((array,), {})], False, placement, futures[1])
    assert placement.stats == {
        "placed": 2,
        "reused": 0,
        "by_reference": 0,
        "pool_hits": 0,
        "lent": 0,
    }
    assert pickle.loads(first)[1][0][0][0][-1] == 0.0
    assert pickle.loads(second)[1][0][0][0][-1] == 7.0
    for future in futures:
        future.set_result(None)
    assert not placement._placed
    placement.close()


def test_a_reshaped_or_non_contiguous_array_is_placed_again(np: Any) -> None:
    placement = Placement()
    array = np.arange(MiB // 4, dtype=np.float64)
    futures: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in "abcd"]
    encode_call(array_sum, [((array,), {})], False, placement, futures[0])
    with warnings.catch_warnings():  # NumPy 2.5 deprecates it; it is still what users do
        warnings.simplefilter("ignore", DeprecationWarning)
        array.shape = (2, MiB // 8)  # the same object and bytes, another layout
    encode_call(array_sum, [((array,), {})], False, placement, futures[1])
    strided = array[:, ::2]
    encode_call(array_sum, [((strided,), {})], False, placement, futures[2])
    encode_call(array_sum, [((strided,), {})], False, placement, futures[3])
    assert placement.stats["placed"] == 4  # a strided array is never compared: copied again
    for future in futures:
        future.set_result(None)
    placement.close()


def test_only_provably_unchanging_objects_are_reused_without_a_comparison(np: Any) -> None:
    from hybridexec._shm import Copies, unchanging
    from hybridexec._shm._reuse import same_bytes

    owned = np.zeros(16)
    owned.flags.writeable = False  # can be switched back on: not proof
    frozen = np.frombuffer(bytes(128), dtype=np.float64)
    assert all(unchanging(obj) for obj in (b"x", frozen, frozen[2:]))
    changeable = (owned, owned[2:], bytearray(3), np.frombuffer(bytearray(128)))
    assert not any(unchanging(obj) for obj in changeable)
    copies: Copies[str] = Copies()
    shares = [copies.add(obj, "copy") for obj in (owned, frozen)]
    assert copies.find(owned) is None  # the remote lanes: a changeable object is sent again
    assert copies.find(owned, compared=True) is shares[0]  # placement: compared by the caller
    assert copies.find(frozen) is shares[1]
    assert [copies.release(s) for s in shares * 2] == [False, False, True, True]
    assert not copies
    nan = np.array([np.nan, -0.0, 1.0])
    assert same_bytes(nan, nan.copy())  # memory, not values: a NaN equals its copy
    assert not same_bytes(nan, np.array([np.nan, 0.0, 1.0]))
    assert not same_bytes(nan[::2], nan[::2].copy())  # not contiguous: never trusted


def test_a_view_of_a_shared_array_is_sent_by_reference(np: Any, process_ex: Executor) -> None:
    with SharedArray.zeros((4, MiB // 8)) as shared:
        row = shared.array[2]
        process_ex.submit(write_first, row, 9.0).result()  # writable: it is shared memory
        assert shared.array[2, 0] == 9.0
        assert process_ex._router.processes.placement.stats["by_reference"] == 1
        assert process_ex._router.processes.placement.stats["placed"] == 0
        strided = shared.array[:, ::-2]  # any layout works, negative strides too
        assert process_ex.submit(array_sum, strided).result() == float(strided.sum())


def test_large_results_come_back_through_shared_memory_and_own_it(
    np: Any, process_ex: Executor
) -> None:
    result = process_ex.submit(doubled, np.ones(2 * MiB // 8)).result()
    writable, mapped, _ = describe(result)
    assert writable
    assert mapped
    assert float(result.sum()) == 2.0 * (2 * MiB // 8)
    assert mapping_of(result.base) is None  # its name is gone already: nothing to leak


def test_an_input_returned_unchanged_comes_back_as_a_copy_of_its_own(
    np: Any, process_ex: Executor
) -> None:
    array = np.arange(MiB // 4, dtype=np.float64)
    result = process_ex.submit(identity, array).result()
    assert np.array_equal(result, array)
    # Not a view of the copy the task received: that segment goes back to the pool, and the
    # next task's argument would be copied into it (test_shm_aliasing.py).
    assert result.flags.writeable
    assert mapping_of(result.base) is None  # handed over and unlinked, as any large result


def test_a_temporary_shared_array_passed_to_submit_stays_alive(np: Any) -> None:
    with Executor(max_processes=1, kind="process") as ex:
        future = ex.submit(shared_sum, SharedArray.from_numpy(np.ones(1000)))
        gc.collect()
        assert future.result() == 1000.0


def test_placement_falls_back_to_pickling_when_shared_memory_is_full(
    np: Any, process_ex: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> Segment:
        raise SharedMemoryError("not enough shared memory: asked for 1 bytes, 0 bytes free")

    monkeypatch.setattr(Segment, "create", full)
    writable, mapped, _ = process_ex.submit(describe, np.ones(2 * MiB // 8)).result()
    assert writable
    assert not mapped


def test_package_imports_without_numpy() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["numpy"] = None  # make `import numpy` fail
        import hybridexec
        with hybridexec.SharedBuffer(4) as b, hybridexec.SharedList([1]) as l:
            b.buf[:] = b"abcd"
        try:
            hybridexec.SharedArray.zeros(3)
        except hybridexec.BackendUnavailableError as exc:
            assert "hybridexec[numpy]" in str(exc)
        else:
            raise AssertionError("no error")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=50)


def test_a_worker_keeps_mappings_for_reuse_and_drops_them_once_unlinked(np: Any) -> None:
    ex = Executor(max_processes=1, kind="process")
    try:
        first = SharedArray.zeros(1000)
        ex.submit(fill_array, first, 1.0).result()
        assert ex.submit(kept_mappings).result() == [first.name]  # kept after the task
        first.close()  # unlinked by its owner ...
        with SharedArray.zeros(10) as second:
            ex.submit(fill_array, second, 1.0).result()
            assert ex.submit(kept_mappings).result() == [second.name]  # ... so dropped
    finally:
        ex.shutdown(wait=True)


def _mapped_by(pid: int, name: str) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return name in f.read()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/maps")
def test_an_idle_worker_lets_go_of_a_kept_mapping_once_its_owner_closed_it(np: Any) -> None:
    # Outside tester 13b's B1: a kept mapping holds the memory of a segment unlinked since;
    # a worker that waits for its next call sweeps them (no next attach needed).
    ex = Executor(max_processes=1, kind="process")
    try:
        shared = SharedArray.zeros(1000)
        name = shared.name
        ex.submit(fill_array, shared, 1.0).result(timeout=30)
        pid = ex.submit(os.getpid).result(timeout=30)
        assert _mapped_by(pid, name)  # kept after the task
        shared.close()
        assert wait_until(lambda: not _mapped_by(pid, name), timeout=10)
    finally:
        ex.shutdown(wait=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/<pid>/maps")
def test_the_main_program_keeps_no_mapping_of_a_segment_it_attached_and_dropped(np: Any) -> None:
    # Round 13 (13d's D2, the parent's side): only child processes keep mappings for reuse;
    # this process has no idle moment to let go of one whose owner closed it. The segment is
    # made by hand (as another program would), so that attaching maps it anew here.
    name = f"hx{os.getpid()}_{os.urandom(8).hex()}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 8000)
        attached = SharedArray.attach(name, (1000,), "float64")
        assert _mapped_by(os.getpid(), name)
        del attached  # dropped, not closed (close() never keeps a mapping)
        gc.collect()
        assert not _mapped_by(os.getpid(), name)
    finally:
        os.close(fd)
        os.unlink(path)


def test_a_process_actor_writes_into_a_shared_array(np: Any) -> None:
    ref = hybridexec.spawn(Filler, kind="process")
    try:
        with SharedArray.zeros(10) as shared:
            assert ref.ask(Filler.fill, shared, 2.0).result(timeout=30) == 20.0
            assert float(shared.array.sum()) == 20.0
    finally:
        ref.stop()


# ---- a full /dev/shm (fault injection) ----------------------------------------------------
@pytest.fixture
def shm_full() -> Iterator[None]:
    import errno

    from hybridexec import _faults

    _faults.inject("shm.create", _faults.Fault("raise", OSError(errno.ENOSPC, "No space left")))
    try:
        yield
    finally:
        _faults.clear()


def _ours() -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if owner_pid_of(n) == os.getpid()]


@pytest.mark.usefixtures("shm_full")
def test_a_full_dev_shm_fails_creation_precisely_and_leaves_nothing_half_made(np: Any) -> None:
    before = _ours()
    for make in (lambda: SharedBuffer(MiB), lambda: SharedArray.zeros((16,), "f8")):
        with pytest.raises(SharedMemoryError, match="not enough shared memory"):
            make()
    assert _ours() == before


def test_a_full_dev_shm_makes_placement_pickle_and_the_lane_recovers(
    np: Any, process_ex: Executor
) -> None:
    import errno

    from hybridexec import _faults

    array = np.arange(MiB // 4, dtype=np.float64)  # 2 MiB: placed when there is space
    placement = process_ex._router.processes.placement
    _faults.inject("shm.create", _faults.Fault("raise", OSError(errno.ENOSPC, "full"), times=2))
    try:
        assert process_ex.submit(array_sum, array).result(timeout=30) == float(array.sum())
        assert placement.stats["placed"] == 0  # pickled instead (I6: only this task touched)
    finally:
        _faults.clear()
    assert process_ex.submit(array_sum, array + 1).result(timeout=30) == float((array + 1).sum())
    assert placement.stats["placed"] == 1  # space again: placed again
