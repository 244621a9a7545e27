"""Tests for policyd.fastpath: a request read by its shape (or by finding its attributes) is
exactly the request the general path reads, or the same error."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.core.request import Request
from policyd.policy import fastpath
from policyd.policy.protocol import ProtocolError, RequestParser
from tests.unit.policy.test_protocol import REQUESTS, outcome, split_at

CONTROL = re.compile("[\x00-\x1f\x7f]")
#: The names of the recorded Postfix 3.7 requests, in Postfix's order.
POSTFIX = tuple(RequestParser().feed_attrs(REQUESTS[0])[0])


@pytest.fixture(autouse=True)
def no_shapes() -> Iterator[None]:
    """Each test starts with no learned shape (they are kept per process), and leaves none."""
    fastpath.forget()
    yield
    fastpath.forget()


def general(data: bytes) -> list[Request]:
    """The requests of `data` as the general path reads them (every fast path bypassed)."""
    parser = RequestParser()
    return [Request.from_attrs(attrs) for attrs in parser._feed(data)]


def assert_read_alike(chunks: list[bytes]) -> None:
    """feed_requests gives what feed gives (as Requests), or the same error."""
    full, full_err, full_pending = outcome(chunks)
    fast, fast_err, fast_pending = outcome(chunks, requests=True)
    assert fast_err == full_err
    if full_err is None:
        assert fast == [Request.from_attrs(a).as_dict() for a in full]
        assert fast_pending == full_pending


def encode(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b"=" + value + b"\n" for name, value in pairs) + b"\n"


def test_a_request_teaches_its_shape_and_the_next_one_is_read_by_it() -> None:
    first, second = REQUESTS[0], REQUESTS[1]
    assert fastpath.read_whole(first) == general(first)[0]  # (read by finding: learns)
    assert len(fastpath._shapes) == 1
    shape = fastpath._shapes[0]
    assert shape.read(second.decode()) == general(second)[0]
    (req,) = RequestParser().feed_requests(second)
    assert req == general(second)[0] and req.printable
    assert req.sasl_username == "alice@example.org" and req.server_port == "37965"


def test_every_recorded_request_is_read_by_the_one_shape_of_postfix() -> None:
    for raw in REQUESTS:
        RequestParser().feed_requests(raw)
    assert len(fastpath._shapes) == 1
    for raw in REQUESTS:
        assert fastpath._shapes[0].read(raw.decode()) == general(raw)[0]


def test_a_shape_without_some_decision_attributes_reads_them_as_empty() -> None:
    fastpath.learn("sender=a@b\nrequest=x\n\n", {"sender": "a@b", "request": "x"})
    (req,) = RequestParser().feed_requests(b"sender=c@d\nrequest=smtpd_access_policy\n\n")
    assert req == Request(sender="c@d", request="smtpd_access_policy") and req.printable
    assert req.policy_context == "" and req.client_address == ""


@pytest.mark.parametrize(
    "data",
    [
        b"sender=c@d\nrequest=y\nsender=e@f\n\n",  # a name repeated: the first wins
        b"request=y\nsender=c@d\n\n",  # the names in another order
        b"sender=c@d\n\n",  # a name missing
        b"sender=c@d\nrequest=y\nextra=1\n\n",  # a name more
        b"sender=c\td\nrequest=y\n\n",  # a control character in a value
        b"sender=c@d\r\nrequest=y\r\n\r\n",  # CR LF
        b"sender=c@d\nrequest=y\x00\n\n",  # NUL: refused
        b"sender=c@d\nrequest\n\n",  # no "=": refused
        b"\nsender=c@d\nrequest=y\n\n",  # an empty line first
        b"sender=c@d\nrequest=y\n\nsender=e@f\nrequest=z\n\n",  # two requests
    ],
)
def test_a_request_not_of_the_shape_is_read_as_the_general_path_reads_it(data: bytes) -> None:
    fastpath.learn("sender=a@b\nrequest=x\n\n", {"sender": "a@b", "request": "x"})
    shape = fastpath._shapes[0]
    assert shape.read(data.decode("utf-8", "surrogateescape")) is None
    assert_read_alike([data])


def test_values_with_equals_signs_and_non_utf8_bytes_are_of_the_shape() -> None:
    fastpath.learn("sender=a@b\nrequest=x\n\n", {"sender": "a@b", "request": "x"})
    data = b"sender=a=b\xff\xc3\xa9 \x7e@x\nrequest==\n\n"
    assert fastpath._shapes[0].read(data.decode("utf-8", "surrogateescape")) is not None
    assert RequestParser().feed_requests(data) == general(data)


def test_a_request_with_a_repeated_name_teaches_nothing() -> None:
    data = b"sender=a@b\nrequest=x\nsender=c@d\n\n"
    assert RequestParser().feed_requests(data) == general(data)
    assert fastpath._shapes == []


def test_a_control_character_does_not_stop_that_shape_being_learned_later() -> None:
    RequestParser().feed_requests(b"sender=a\tb\nrequest=x\n\n")
    assert fastpath._shapes == []
    RequestParser().feed_requests(b"sender=a@b\nrequest=x\n\n")
    assert len(fastpath._shapes) == 1


def test_learning_stops_after_so_many_shapes_and_so_many_orders() -> None:
    for i in range(fastpath.MAX_SHAPES + 3):
        RequestParser().feed_requests(f"n{i}=v\n\n".encode())
    assert len(fastpath._shapes) == fastpath.MAX_SHAPES
    fastpath.forget()
    for i in range(fastpath.MAX_CANDIDATES):  # a space in a name: candidates, never shapes
        RequestParser().feed_requests(f"n {i}=v\n\n".encode())
    assert not fastpath.learning()
    RequestParser().feed_requests(b"sender=a@b\n\n")
    assert fastpath._shapes == []  # (and it is still read right, by finding)
    assert RequestParser().feed_requests(b"sender=a@b\n\n") == [Request(sender="a@b")]


def test_a_name_that_is_not_printable_ascii_teaches_nothing() -> None:
    for data in ["s\u00e9nder=a\n\n".encode(), b"a\x01b=c\n\n", b"a b=c\n\n"]:
        assert RequestParser().feed_requests(data) == general(data)
    assert fastpath._shapes == []


# Values that exercise the shape's checks: "=", controls, CR, NUL, LF, non-UTF-8, UTF-8.
_VALUE_PIECES = st.sampled_from(
    [b"", b"a", b"=", b"\t", b"\r", b"\x00", b"\x7f", b"\x1b", b"\n", b" ", b"\xff", b"\xc3\xa9",
     b"\xe2\x80", b"@", b"\\", b'"', b"\xc2\x85"]
)  # fmt: skip
_VALUES = st.lists(_VALUE_PIECES, max_size=6).map(b"".join)


@st.composite
def postfix_like(draw: st.DrawFn) -> bytes:
    """A request of Postfix's names, random values, and sometimes one line moved, dropped,
    repeated or broken."""
    pairs = [(n.encode(), draw(_VALUES)) for n in POSTFIX]
    change = draw(st.sampled_from(["none", "none", "move", "drop", "repeat", "break", "empty"]))
    i = draw(st.integers(0, len(pairs) - 1))
    j = draw(st.integers(0, len(pairs) - 1))
    if change == "move":
        pairs.insert(j, pairs.pop(i))
    elif change == "drop":
        del pairs[i]
    elif change == "repeat":
        pairs.insert(j, (pairs[i][0], draw(_VALUES)))
    elif change == "break":
        pairs[i] = (pairs[i][0] + b"\x00", b"")
    elif change == "empty":
        pairs[i] = (b"", pairs[i][1])
    return encode(pairs)


@settings(deadline=None, max_examples=400)
@given(data=postfix_like(), cuts=st.lists(st.integers(0, 800), max_size=3))
def test_with_postfixs_shape_learned_every_request_is_read_as_the_general_path_reads_it(
    data: bytes, cuts: list[int]
) -> None:
    fastpath.forget()
    RequestParser().feed_requests(REQUESTS[0])
    assert len(fastpath._shapes) == 1
    try:
        expected: list[Request] | type[ProtocolError] = general(data)
    except ProtocolError as exc:
        expected = type(exc)
    try:
        got: list[Request] | type[ProtocolError] = RequestParser().feed_requests(data)
    except ProtocolError as exc:
        got = type(exc)
    assert got == expected
    for req in got if isinstance(got, list) else []:  # printable: it is vouched for
        assert not req.printable or not CONTROL.search("".join(req.as_dict().values()))
    assert_read_alike(split_at(data, cuts))
