"""Running a user's script in a fresh interpreter of its own session (outside testers' cases)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAIN_THREAD_WAITS = """
def main_thread_frames():
    # The names of the main thread's frames, innermost first (_waits.join_thread is a join).
    names, frame = [], sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        name = frame.f_code.co_name
        names.append("join" if name == "join_thread" else name)
        frame = frame.f_back
    return names


def open_when_main_waits(gate, waits):
    # Creates the file ``gate`` once the main thread waits in every one of ``waits``.
    while not waits <= set(main_thread_frames()):
        time.sleep(0.01)
    open(gate, "w").close()
"""
"""Functions for a script's text (it imports os, sys, threading, time): a thread of the script
acts once its main thread waits in given functions (a Ctrl-C scenario's join)."""


def start_script(tmp_path: Path, body: str, *args: str) -> subprocess.Popen[str]:
    """Start ``body`` as a script in ``tmp_path``, in a session of its own, pipes for output.

    The caller kills the session (``os.killpg(proc.pid, SIGKILL)``) when it is done with it.
    """
    path = tmp_path / "scenario.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        # faulthandler: an overrun script is sent SIGABRT first, which prints every thread's
        # stack (run_script), so a hang seen once in CI says where it hung.
        [sys.executable, "-X", "faulthandler", path.name, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL whatever the script left in its session (the script itself included)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_script(
    tmp_path: Path, body: str, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as a script in ``tmp_path``; on overrun kill its whole session."""
    proc = start_script(tmp_path, body, *args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGABRT)  # its threads' stacks to stderr, then it ends
            out, err = proc.communicate(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            kill_session(proc)
            out, err = proc.communicate()
        err += f"\n[scenario overran {timeout} s and was killed]"
    finally:
        kill_session(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_piped(tmp_path: Path, body: str, timeout: float = 50.0) -> subprocess.CompletedProcess[str]:
    """Run ``body`` piped to the interpreter (``python - < script``: no file for a worker to
    import), in ``tmp_path``, in a session of its own killed at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hang is killed with its workers
    )
    try:
        out, err = proc.communicate(textwrap.dedent(body), timeout=timeout)
    finally:
        kill_session(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
