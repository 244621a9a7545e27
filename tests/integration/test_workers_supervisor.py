"""The workers' supervisor (policy/workers.py) run in the test's own process, over real worker
processes (`python -m policyd serve`): its whole life read from its own state, where
test_workers.py watches a supervisor process from outside (/proc, its log, its exit status).

Here the supervisor's code runs where the coverage report sees it; the behaviour checked is the
same one a supervisor process has: every worker serves, one reload for all (a bad config none),
a killed worker comes back, and the stop leaves no worker and no socket file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.policy import workers
from policyd.policy.protocol import encode_request
from tests.integration.test_ops import CLIENT, DENY, OK, RANGES_B, free_port, replace_file, request
from tests.integration.test_workers import workers_config


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pd-", dir="/tmp") as d:
        yield Path(d)


async def ask(address: tuple[str, int] | str) -> str:
    """One request on a new connection; the action."""
    if isinstance(address, str):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(encode_request(request(CLIENT)))
        raw = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    finally:
        writer.close()
    text = raw.decode().rstrip("\n")
    assert text.startswith("action="), text
    return text[len("action=") :]


async def until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_the_supervisor_in_process(
    tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "start_logging", lambda config, path: None)
    port = free_port()
    unix = str(short_dir / "policy.sock")
    cfg = workers_config(tmp_path, [f"127.0.0.1:{port}", f"unix:{unix}"])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS")}
    sup = workers.Supervisor(cfg, 2, environ=env)

    async def main() -> None:
        life = asyncio.ensure_future(sup.serve())
        await until("every worker serves", lambda: life.done() or sup.status().startswith("2 of"))
        await until("both ready", lambda: life.done() or all(w.ready.is_set() for w in sup.workers))
        assert not life.done(), life.exception()
        assert sup.addresses == [f"127.0.0.1:{port}", f"unix:{unix}"]
        assert [await ask(("127.0.0.1", port)) for _ in range(20)] == [OK] * 20
        assert await ask(unix) == OK
        pids = [w.pid for w in sup.workers]
        assert None not in pids and len(set(pids)) == 2

        # a broken config: checked once here, no worker reloads, the answers stay
        good = cfg.read_text()
        replace_file(cfg, good + "\n[server]\nbogus = 1\n")
        assert await sup.reload() is False
        assert sup.reload_failures == 1 and sup.generation == 0
        assert await ask(("127.0.0.1", port)) == OK
        # a good one: every worker reloads (the client's range is gone), the same processes
        replace_file(cfg, good)
        replace_file(tmp_path / "ranges.txt", RANGES_B)
        assert await sup.reload() is True
        assert sup.generation == 1
        assert [w.pid for w in sup.workers] == pids
        assert [await ask(("127.0.0.1", port)) for _ in range(20)] == [DENY] * 20
        assert await ask(unix) == DENY

        # a worker killed: restarted (after the backoff), and it serves the new config
        victim = sup.workers[0]
        first = pids[0]
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until("worker 1 restarted", lambda: victim.pid not in (None, first), 20)
        await until("worker 1 ready again", victim.ready.is_set, 30)
        assert [await ask(("127.0.0.1", port)) for _ in range(20)] == [DENY] * 20

        # the stop: every worker ends, the unix socket file is gone
        live = [w.proc for w in sup.workers]
        sup.stopping.set()
        await asyncio.wait_for(life, 60)
        assert all(p is not None and p.returncode is not None for p in live)
        assert not os.path.exists(unix)

    asyncio.run(main())
