"""The decision log line: stable format, and the stderr fast path writes what logging would."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from policyd import decision_log
from policyd.core.decision import Decision, Reason, Verdict
from policyd.core.request import Request
from policyd.decision_log import decision_line, kv, log_decision, setup_logging

ATTRS = Request(
    queue_id="",
    instance="1.2.3.0",
    client_address="192.0.2.7",
    sasl_username="alice",
    sender="bob@example.org",
    recipient="x@example.net",
)


def with_sender(sender: str) -> Request:
    return Request.from_attrs({**ATTRS.as_dict(), "sender": sender})


REJECT = Decision(
    Verdict.REJECT,
    Reason.SENDER_NOT_OWNED,
    "553 5.7.1 Sender address <bob@example.org> is not owned by user alice",
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    decision_log._direct = None


def test_line_format_is_stable() -> None:
    line = decision_line(ATTRS, "submission", REJECT, 0.00012)
    assert line == (
        'decision queue_id="" instance=1.2.3.0 client=192.0.2.7 login=alice '
        "sender=bob@example.org recipient=x@example.net profile=submission "
        'action="553 5.7.1 Sender address <bob@example.org> is not owned by user alice" '
        "reason=sender_not_owned ms=0.12"
    )
    warn = Decision(Verdict.DUNNO, Reason.SENDER_NOT_OWNED, would_have=REJECT.reply)
    assert ' action=DUNNO reason=sender_not_owned would="553 5.7.1 ' in decision_line(
        ATTRS, "submission", warn, 0.0
    )


@pytest.mark.parametrize(
    ("value", "out"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("a b", '"a b"'),
        ('q"x', '"q\\"x"'),
        ("a=b", '"a=b"'),
        ("nl\nx", '"nl\\x0ax"'),
        ("tab\t", '"tab\\x09"'),
        ("back\\", '"back\\\\"'),
    ],
)
def test_kv_quoting(value: str, out: str) -> None:
    assert kv(value) == out


@pytest.mark.parametrize("printable", [True, False])
@pytest.mark.parametrize(
    "sender", ["bob@example.org", "", "a b@x", 'q"@x', "a=b@x", "back\\@x", "j\u00f6@x"]
)
def test_each_value_is_quoted_alike_whether_or_not_the_parser_vouched_for_it(
    sender: str, printable: bool
) -> None:
    req = Request(**{**ATTRS.as_dict(), "sender": sender}, printable=printable)
    line = decision_line(req, "submission", REJECT, 0.0)
    assert f" sender={kv(sender)} " in line
    assert " instance=1.2.3.0 client=192.0.2.7 login=alice " in line


def test_a_request_not_vouched_for_has_its_control_characters_escaped() -> None:
    line = decision_line(with_sender("a\tb@x"), "submission", REJECT, 0.0)
    assert ' sender="a\\x09b@x" ' in line


def test_profile_names_and_accept_words_are_quoted_when_they_need_it() -> None:
    accept = Decision(Verdict.ACCEPT, Reason.SENDER_OWNED, reply="PREPEND X-Ok: yes")
    line = decision_line(ATTRS, "my profile", accept, 0.0)
    assert ' profile="my profile" action="PREPEND X-Ok: yes" reason=sender_owned ' in line
    assert " profile=submission action=DUNNO " in decision_line(
        ATTRS, "submission", Decision(Verdict.DUNNO, Reason.NOT_TRUSTED), 0.0
    )


def test_fast_path_writes_exactly_what_logging_writes(restore_logging: None) -> None:
    fast = io.StringIO()
    setup_logging(stream=fast)
    assert decision_log._direct is not None and decision_log._direct.usable()
    log_decision(with_sender("we\nird"), "submission", REJECT, 0.001)
    slow = io.StringIO()
    setup_logging(stream=slow)
    decision_log._direct = None  # force the logging module path
    log_decision(with_sender("we\nird"), "submission", REJECT, 0.001)
    assert fast.getvalue() == slow.getvalue()
    assert fast.getvalue().startswith("INFO policyd.decision: decision ")
    assert fast.getvalue().count("\n") == 1


def test_fast_path_steps_aside_for_other_handlers_and_levels(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    extra = io.StringIO()
    h = logging.StreamHandler(extra)
    logging.getLogger().addHandler(h)
    try:
        log_decision(ATTRS, "submission", REJECT, 0.0)
    finally:
        logging.getLogger().removeHandler(h)
    assert "reason=sender_not_owned" in extra.getvalue()  # the added handler saw it
    assert "reason=sender_not_owned" in out.getvalue()
    setup_logging(level="warning", stream=out)
    before = out.getvalue()
    log_decision(ATTRS, "submission", REJECT, 0.0)
    assert out.getvalue() == before  # INFO is off: nothing written by either path


def logged_by_the_logging_module(senders: list[str]) -> io.StringIO:
    """What the logging module itself writes for a reject of each sender (the fast path
    off): what the fast path must write too."""
    slow = io.StringIO()
    setup_logging(stream=slow)
    decision_log._direct = None
    for s in senders:
        log_decision(with_sender(s), "submission", REJECT, 0.001)
    return slow


def test_on_the_event_loop_lines_are_written_together_at_the_end_of_the_iteration(
    restore_logging: None,
) -> None:
    import asyncio

    senders = [f"user{i}@example.org" for i in range(3)]
    slow = logged_by_the_logging_module(senders)

    fast = io.StringIO()
    setup_logging(stream=fast)

    async def main() -> tuple[str, str]:
        for s in senders:
            log_decision(with_sender(s), "submission", REJECT, 0.001)
        held = fast.getvalue()  # nothing yet: the batch waits for the end of the iteration
        await asyncio.sleep(0)
        return held, fast.getvalue()

    held, written = asyncio.run(main())
    assert held == ""
    assert written == slow.getvalue()
    assert written.count("\n") == 3


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_held_for_a_server_batch_are_written_with_one_write_at_its_flush(
    restore_logging: None,
) -> None:
    import asyncio

    senders = [f"user{i}@example.org" for i in range(3)]
    slow = logged_by_the_logging_module(senders)

    fast = CountingStream()
    setup_logging(stream=fast)

    async def main() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        decision_log.hold_decision_lines()  # what the server does around one iteration
        for s in senders:
            log_decision(with_sender(s), "submission", REJECT, 0.001)
        held = fast.getvalue()
        callbacks = len(getattr(loop, "_ready", ()))  # (asyncio's queue of call_soon callbacks)
        decision_log.flush_decision_log()
        assert fast.getvalue() == slow.getvalue() and fast.writes == 1
        return held, callbacks

    held, callbacks = asyncio.run(main())
    assert held == ""  # nothing before the flush
    assert callbacks == 0  # and no callback of its own was scheduled for them
    # after the flush, a line off any batch opens one of its own again (written at the end
    # of its iteration)
    later = CountingStream()
    setup_logging(stream=later)

    async def after() -> tuple[str, str]:
        decision_log.hold_decision_lines()
        decision_log.flush_decision_log()
        log_decision(ATTRS, "submission", REJECT, 0.001)
        before = later.getvalue()
        await asyncio.sleep(0)
        return before, later.getvalue()

    before, written = asyncio.run(after())
    assert before == "" and written.count("reason=sender_not_owned") == 1


def test_holding_lines_does_nothing_when_the_level_hides_them(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging(level="warning", stream=out)
    decision_log.hold_decision_lines()
    log_decision(ATTRS, "submission", REJECT, 0.0)
    decision_log.flush_decision_log()
    assert out.getvalue() == ""


def test_lines_held_on_the_loop_are_written_when_logging_is_set_up_again(
    restore_logging: None,
) -> None:
    import asyncio

    out = io.StringIO()
    setup_logging(stream=out)

    async def main() -> str:
        log_decision(ATTRS, "submission", REJECT, 0.001)
        setup_logging(stream=io.StringIO())  # (a reload) before the iteration ends
        return out.getvalue()  # already written to the old handler's stream

    assert asyncio.run(main()).count("reason=sender_not_owned") == 1
    assert out.getvalue().count("reason=sender_not_owned") == 1


def test_the_private_stdlib_api_the_fast_path_reads_is_still_there() -> None:
    # If a Python release renames these, the fast path would silently never apply (or worse,
    # misformat): this test names what changed.
    import asyncio

    assert callable(getattr(asyncio, "_get_running_loop", None))
    f = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    assert hasattr(f, "_fmt") and hasattr(f, "_style")
    assert hasattr(f._style, "_fmt") and hasattr(f._style, "_defaults")
    assert decision_log.formats_plainly(f)
    assert not decision_log.formats_plainly(logging.Formatter("%(message)s"))
    assert not decision_log.formats_plainly(
        logging.Formatter("%(levelname)s %(name)s: %(message)s", defaults={"x": "1"})
    )
