"""Child servers killed when the test process exits, even after a test that failed to stop one."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess


def reaped_at_exit(cont: bool = False) -> dict[int, subprocess.Popen[bytes]]:
    """A registry (pid -> process) whose processes get SIGKILL at exit; with `cont`, SIGCONT
    first (for servers a test may have stopped with SIGSTOP)."""
    live: dict[int, subprocess.Popen[bytes]] = {}

    def reap_all() -> None:
        for pid, proc in list(live.items()):
            with contextlib.suppress(ProcessLookupError):
                if cont:
                    os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
            live.pop(pid, None)

    atexit.register(reap_all)
    return live


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a child that still runs: SIGTERM, then SIGKILL if it is not gone within timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
