"""policyd.commands: an outside command's output, or one error naming why."""

from __future__ import annotations

import sys

import pytest

from policyd.commands import CommandError, run_command

PY = sys.executable


def test_the_output_and_the_input() -> None:
    out = run_command(
        [PY, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
        timeout=10,
        stdin=b"abc\n",
    )
    assert out == b"ABC\n"


def test_a_failure_names_the_exit_status_and_the_last_stderr_line() -> None:
    prog = (
        "import sys; print('first', file=sys.stderr); print('last', file=sys.stderr); sys.exit(75)"
    )
    with pytest.raises(CommandError) as e:
        run_command([PY, "-c", prog], timeout=10)
    assert str(e.value) == f"{PY} exited with 75: last"


def test_a_failure_without_stderr_names_the_status_alone() -> None:
    with pytest.raises(CommandError) as e:
        run_command([PY, "-c", "raise SystemExit(3)"], timeout=10)
    assert str(e.value) == f"{PY} exited with 3"


def test_a_missing_command_and_a_timeout_are_errors() -> None:
    with pytest.raises(CommandError, match="cannot run /nonexistent/tool"):
        run_command(["/nonexistent/tool"], timeout=10)
    with pytest.raises(CommandError, match="timed out"):
        run_command([PY, "-c", "import time; time.sleep(30)"], timeout=0.5)
