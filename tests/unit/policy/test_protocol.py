"""Tests for policyd.protocol: the sans-IO policy delegation codec."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.core.limits import MAX_ATTRIBUTES, MAX_LINE_BYTES, MAX_REQUEST_BYTES
from policyd.core.request import DECISION_ATTRIBUTES, Request
from policyd.policy.actions import encode_action
from policyd.policy.protocol import (
    LineTooLong,
    MalformedRequest,
    PolicyRequest,
    ProtocolError,
    RequestParser,
    RequestTooLarge,
    encode_request,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "postfix-3.7-policy-requests.txt"


# --------------------------------------------------------------------------------------------
# Helpers


def load_requests() -> list[bytes]:
    """The recorded requests, each as Postfix sent it (attribute lines, then an empty line).
    The file has '# request N ...' comment lines before each request; they are dropped."""
    lines = [line for line in DATA.read_bytes().split(b"\n") if not line.startswith(b"#")]
    blocks = b"\n".join(lines).split(b"\n\n")
    return [block.strip(b"\n") + b"\n\n" for block in blocks if block.strip(b"\n")]


def naive_attrs(raw: bytes) -> dict[str, str]:
    """Independent reference parse of one well-formed LF-only request (first value wins)."""
    attrs: dict[str, str] = {}
    for line in raw.decode("utf-8", "surrogateescape").split("\n"):
        if line:
            name, sep, value = line.partition("=")
            assert sep, line
            attrs.setdefault(name, value)
    return attrs


REQUESTS = load_requests()
EXPECTED = [naive_attrs(r) for r in REQUESTS]
STREAM = b"".join(REQUESTS)


def feed_all(chunks: Iterable[bytes], parser: RequestParser | None = None) -> list[dict[str, str]]:
    parser = parser or RequestParser()
    out: list[dict[str, str]] = []
    for chunk in chunks:
        out.extend(dict(req.attrs) for req in parser.feed(chunk))
    return out


def one(data: bytes) -> PolicyRequest:
    parser = RequestParser()
    reqs = parser.feed(data)
    assert len(reqs) == 1
    assert not parser.pending
    return reqs[0]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def outcome(
    chunks: Iterable[bytes], requests: bool = False
) -> tuple[list[dict[str, str]], type[ProtocolError] | None, bool]:
    """(requests, error class or None, pending) of feeding the chunks in order (with
    `requests`, through feed_requests: each as Request.as_dict())."""
    parser = RequestParser()
    out: list[dict[str, str]] = []
    try:
        for chunk in chunks:
            if requests:
                out.extend(r.as_dict() for r in parser.feed_requests(chunk))
            else:
                out.extend(dict(req.attrs) for req in parser.feed(chunk))
    except ProtocolError as exc:
        return out, type(exc), parser.pending
    return out, None, parser.pending


# --------------------------------------------------------------------------------------------
# Real Postfix requests


def test_fixture_has_the_recorded_requests() -> None:
    assert len(REQUESTS) == 12
    for raw, attrs in zip(REQUESTS, EXPECTED, strict=True):
        assert not raw.startswith(b"#")
        assert raw.endswith(b"=\n\n") or raw.endswith(b"\n\n")
        assert attrs["request"] == "smtpd_access_policy"
        assert len(attrs) >= 28


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_real_request_whole(index: int) -> None:
    req = one(REQUESTS[index])
    assert dict(req.attrs) == EXPECTED[index]


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_real_request_split_at_every_byte_boundary(index: int) -> None:
    raw = REQUESTS[index]
    for cut in range(len(raw) + 1):
        parser = RequestParser()
        first = parser.feed(raw[:cut])
        assert first == [] or cut == len(raw)
        assert parser.pending == (0 < cut < len(raw))
        second = parser.feed(raw[cut:])
        assert [dict(r.attrs) for r in first + second] == [EXPECTED[index]], cut
        assert not parser.pending


def test_real_stream_byte_at_a_time() -> None:
    parser = RequestParser()
    got = feed_all((STREAM[i : i + 1] for i in range(len(STREAM))), parser)
    assert got == EXPECTED
    assert not parser.pending


def test_real_stream_in_one_chunk() -> None:
    assert feed_all([STREAM]) == EXPECTED


def test_real_stream_in_odd_chunks() -> None:
    for size in (2, 3, 7, 64, 583, 584, 1000, 4096):
        chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
        assert feed_all(chunks) == EXPECTED, size


def test_get_reads_an_attribute_and_gives_empty_when_absent() -> None:
    req = one(REQUESTS[1])
    assert req.get("sender") == "bob@example.org"
    assert req.get("helo_name") == "client.test"
    assert req.get("no_such_attribute") == ""
    assert req.get("no_such_attribute", "x") == "x"


def test_feed_requests_gives_the_decision_attributes_of_a_real_request() -> None:
    full = RequestParser().feed_attrs(REQUESTS[1])[0]
    (req,) = RequestParser().feed_requests(REQUESTS[1])
    assert req == Request.from_attrs(full)
    assert req.sasl_username == "alice@example.org" and req.server_port == "37965"
    assert req.sender == "bob@example.org" and req.queue_id == ""
    assert req.as_dict() == {k: full[k] for k in DECISION_ATTRIBUTES}


@pytest.mark.parametrize(
    "data",
    [
        b"sender=first@x\nrequest=smtpd_access_policy\nsender=second@x\n\n",  # the first wins
        b"request=smtpd_access_policy\nxsender=not@this\nsender=a@b\n\n",  # a name's suffix
        b"client_name=sender=no\nsender=yes@x\n\n",  # "sender=" inside a value
        b"sender=\nrecipient=r@x\n\n",  # an empty value
        b"queue_id=Q\n\n",  # one attribute, at the very start
        b"policy_context=last\n\n",  # and the last one the fast path looks for
        "sender=jos\u00e9@x\ninstance=\u00e9\n\n".encode(),  # UTF-8
        b"sender=\xff\xfe@x\n\n",  # not UTF-8: surrogate escapes, as the full parser
        b"a=1\n\nsender=two@x\n\n",  # two requests in one chunk (the general path)
        b"sender=crlf@x\r\nrequest=smtpd_access_policy\r\n\r\n",  # CRs (the general path)
    ],
)
def test_feed_requests_agrees_with_the_full_parser(data: bytes) -> None:
    full = RequestParser().feed_attrs(data)
    assert RequestParser().feed_requests(data) == [Request.from_attrs(a) for a in full]


@pytest.mark.parametrize(
    "data",
    [b"=x\nsender=a@b\n\n", b"sender=a@b\n=x\n\n", b"sender=a@b\nnoequals\n\n", b"a=\x00\n\n"],
)
def test_feed_requests_refuses_what_the_full_parser_refuses(data: bytes) -> None:
    with pytest.raises(ProtocolError) as full:
        RequestParser().feed_attrs(data)
    with pytest.raises(ProtocolError) as fast:
        RequestParser().feed_requests(data)
    assert fast.value.reason == full.value.reason


def test_a_request_reads_like_a_mapping_for_decision_hooks() -> None:
    req = Request(sender="a@b", recipient="")
    assert req.get("sender") == "a@b"
    assert req.get("recipient") == "" and req.get("recipient", "x") == "x"
    assert req.get("helo_name", "-") == "-"  # not a decision attribute
    assert req == Request.from_attrs({"sender": "a@b", "helo_name": "ignored"})
    assert req != Request(sender="b@a") and hash(req) == hash(Request(sender="a@b"))
    assert repr(req) == "Request(sender='a@b')"


def test_request_is_immutable() -> None:
    req = one(b"sender=a@b\n\n")
    with pytest.raises(TypeError):
        req.attrs["sender"] = "evil@x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.attrs = {}  # type: ignore[misc]
    assert req == PolicyRequest({"sender": "a@b"})


# --------------------------------------------------------------------------------------------
# Framing details


def test_several_requests_in_one_chunk() -> None:
    parser = RequestParser()
    reqs = parser.feed(b"a=1\n\nb=2\nc=3\n\nd=4\n")
    assert [dict(r.attrs) for r in reqs] == [{"a": "1"}, {"b": "2", "c": "3"}]
    assert parser.pending
    assert [dict(r.attrs) for r in parser.feed(b"\n")] == [{"d": "4"}]
    assert not parser.pending


def test_crlf_input() -> None:
    crlf = [r.replace(b"\n", b"\r\n") for r in REQUESTS]
    assert b"\r\n\r\n" in crlf[0]
    assert feed_all([b"".join(crlf)]) == EXPECTED
    raw = crlf[0]
    for cut in range(len(raw) + 1):
        assert feed_all([raw[:cut], raw[cut:]]) == [EXPECTED[0]], cut


def test_mixed_line_endings() -> None:
    assert dict(one(b"a=1\r\nb=2\n\r\n").attrs) == {"a": "1", "b": "2"}
    assert dict(one(b"a=1\nb=2\r\n\n").attrs) == {"a": "1", "b": "2"}


def test_only_one_cr_before_lf_is_stripped_and_inner_cr_is_kept() -> None:
    assert one(b"a=x\ry\n\n").get("a") == "x\ry"
    assert one(b"a=x\r\r\n\n").get("a") == "x\r"
    assert one(b"a=x\r\r\n\r\n").get("a") == "x\r"


def test_cr_split_from_its_lf() -> None:
    assert feed_all([b"a=1\r", b"\n\r", b"\n"]) == [{"a": "1"}]
    assert feed_all([b"\r", b"\na=1\n\n"]) == [{"a": "1"}]


def test_repeated_name_first_value_wins() -> None:
    req = one(b"sender=first@x\nrecipient=r@y\nsender=second@x\nsender=third@x\n\n")
    assert req.get("sender") == "first@x"
    assert dict(req.attrs) == {"sender": "first@x", "recipient": "r@y"}


def test_unknown_attributes_kept() -> None:
    req = one(b"request=smtpd_access_policy\nfuture_attr=42\ntls_sni=mx.example\n\n")
    assert req.get("future_attr") == "42"
    assert req.get("tls_sni") == "mx.example"
    assert list(req.attrs) == ["request", "future_attr", "tls_sni"]


def test_values_may_contain_equals_and_be_empty() -> None:
    req = one(b"policy_context=a=b==c\nqueue_id=\nx==\n\n")
    assert dict(req.attrs) == {"policy_context": "a=b==c", "queue_id": "", "x": "="}


def test_names_and_values_kept_verbatim() -> None:
    req = one(b" sender =  a@b \n\n")
    assert dict(req.attrs) == {" sender ": "  a@b "}


def test_blank_lines_before_a_request_are_skipped() -> None:
    parser = RequestParser()
    assert parser.feed(b"\n\n\r\n\n") == []
    assert not parser.pending
    assert [dict(r.attrs) for r in parser.feed(b"\na=1\n\n\n\nb=2\n\n")] == [{"a": "1"}, {"b": "2"}]


def test_empty_feed() -> None:
    parser = RequestParser()
    assert parser.feed(b"") == []
    assert not parser.pending
    parser.feed(b"a=")
    assert parser.feed(b"") == []
    assert parser.pending


def test_pending_tracks_a_partial_request() -> None:
    parser = RequestParser()
    assert not parser.pending
    parser.feed(b"request=smtpd")
    assert parser.pending
    parser.feed(b"_access_policy\n")
    assert parser.pending
    assert len(parser.feed(b"\n")) == 1
    assert not parser.pending


# --------------------------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"noequals\n\n", "malformed_line"),
        (b"a=1\nnoequals\nb=2\n\n", "malformed_line"),
        (b"a=1\n \n\n", "malformed_line"),  # a space is not an empty line
        (b"\r\r\na=1\n\n", "malformed_line"),  # "\r" left after stripping one CR
        (b"=value\n\n", "empty_name"),
        (b"a=1\n=\n\n", "empty_name"),
        (b"a=b\x00c\n\n", "nul_byte"),
        (b"a\x00=b\n\n", "nul_byte"),
        (b"\x00\n\n", "nul_byte"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    parser = RequestParser()
    with pytest.raises(MalformedRequest) as info:
        parser.feed(data)
    assert info.value.reason == reason
    assert str(info.value)


def test_malformed_message_names_the_line() -> None:
    with pytest.raises(MalformedRequest, match="line 2"):
        RequestParser().feed(b"a=1\nbogus\n\n")


def test_malformed_split_anywhere() -> None:
    data = b"a=1\nbogus\n\n"
    for cut in range(len(data) + 1):
        parser = RequestParser()
        with pytest.raises(MalformedRequest):
            parser.feed(data[:cut])
            parser.feed(data[cut:])


def test_parser_is_dead_after_an_error() -> None:
    parser = RequestParser()
    with pytest.raises(MalformedRequest):
        parser.feed(b"bogus\n\n")
    assert not parser.pending
    for data in (b"", b"a=1\n\n"):
        with pytest.raises(MalformedRequest) as info:
            parser.feed(data)
        assert info.value.reason == "malformed_line"


def test_non_utf8_is_kept_and_never_raises() -> None:
    req = one(b"sender=j\xf6rg@example.org\nsasl_username=\xff\xfe\n\n")
    assert req.get("sender") == "j\udcf6rg@example.org"
    assert req.get("sender") != "jörg@example.org"
    assert req.get("sender").encode("utf-8", "surrogateescape") == b"j\xf6rg@example.org"
    assert req.get("sasl_username") == "\udcff\udcfe"


def test_utf8_split_inside_a_character() -> None:
    raw = "sender=jörg@exämple.org\n\n".encode()
    for cut in range(len(raw) + 1):
        assert feed_all([raw[:cut], raw[cut:]]) == [{"sender": "jörg@exämple.org"}], cut


# --------------------------------------------------------------------------------------------
# Limits


def test_line_at_the_limit_is_accepted() -> None:
    line = b"a=" + b"x" * (MAX_LINE_BYTES - 2)
    assert len(line) == MAX_LINE_BYTES
    assert len(one(line + b"\n\n").get("a")) == MAX_LINE_BYTES - 2
    # also when it arrives in pieces
    assert len(feed_all([line[:100], line[100:], b"\n", b"\n"])) == 1


def test_line_over_the_limit() -> None:
    line = b"a=" + b"x" * (MAX_LINE_BYTES - 1)
    with pytest.raises(LineTooLong) as info:
        RequestParser().feed(b"b=1\n" + line + b"\nc=2\n\n")
    assert info.value.reason == "line_too_long"
    with pytest.raises(LineTooLong):  # complete line, request not yet ended
        RequestParser().feed(b"b=1\n" + line + b"\nc=2\n")
    parser = RequestParser()
    with pytest.raises(LineTooLong):
        for i in range(0, len(line), 1000):
            parser.feed(line[i : i + 1000])
        parser.feed(b"\n\n")


def test_megabyte_line_without_lf_raises_early() -> None:
    parser = RequestParser()
    chunk = b"x" * 1024
    fed = 0
    with pytest.raises(LineTooLong):
        for _ in range(1024):
            fed += len(chunk)
            parser.feed(chunk)
    assert MAX_LINE_BYTES < fed <= MAX_LINE_BYTES + len(chunk)  # the chunk that crossed it
    with pytest.raises(LineTooLong):
        RequestParser().feed(b"a=" + b"x" * (1 << 20))


def _request_of_size(total: int) -> bytes:
    """A valid request of exactly `total` bytes (terminating empty line included)."""
    body = total - 1  # the final "\n"
    lines = []
    index = 0
    while body > 0:
        prefix = f"a{index}=".encode()
        size = min(4000, body - 1)  # bytes before this line's LF
        if body - (size + 1) < len(prefix) + 1 and body - (size + 1) > 0:
            size = body - 1 - (len(prefix) + 1)  # leave room for a minimal last line
        lines.append(prefix + b"x" * (size - len(prefix)) + b"\n")
        body -= size + 1
        index += 1
    raw = b"".join(lines) + b"\n"
    assert len(raw) == total
    return raw


def test_request_at_the_size_limit_is_accepted() -> None:
    raw = _request_of_size(MAX_REQUEST_BYTES)
    assert len(one(raw).attrs) > 1
    assert len(feed_all(raw[i : i + 1000] for i in range(0, len(raw), 1000))) == 1


def test_request_over_the_size_limit() -> None:
    raw = _request_of_size(MAX_REQUEST_BYTES + 1)
    with pytest.raises(RequestTooLarge) as info:
        RequestParser().feed(raw)
    assert info.value.reason == "request_too_large"
    parser = RequestParser()
    with pytest.raises(RequestTooLarge):
        for i in range(0, len(raw), 1000):
            parser.feed(raw[i : i + 1000])


def test_request_without_end_raises_before_growing_past_the_limit() -> None:
    parser = RequestParser()
    line = b"a=" + b"x" * 97 + b"\n"
    fed = 0
    with pytest.raises(RequestTooLarge):
        while fed < 10 * MAX_REQUEST_BYTES:
            fed += len(line)
            parser.feed(line)
    assert MAX_REQUEST_BYTES < fed <= MAX_REQUEST_BYTES + len(line)


def test_attribute_count_limit() -> None:
    ok = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES)) + b"\n"
    assert len(one(ok).attrs) == MAX_ATTRIBUTES
    too_many = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES + 1)) + b"\n"
    with pytest.raises(RequestTooLarge) as info:
        RequestParser().feed(too_many)
    assert info.value.reason == "too_many_attributes"
    repeated = b"a=1\n" * (MAX_ATTRIBUTES + 1) + b"\n"  # repeated names count too
    with pytest.raises(RequestTooLarge):
        RequestParser().feed(repeated)


@pytest.mark.parametrize("blank", [b"\n", b"\r\n"])
def test_endless_blank_lines(blank: bytes) -> None:
    parser = RequestParser()
    chunk = blank * 512
    fed = 0
    with pytest.raises(RequestTooLarge):
        while fed < 100 * MAX_REQUEST_BYTES:
            fed += len(chunk)
            assert parser.feed(chunk) == []
            assert not parser.pending
    assert MAX_REQUEST_BYTES < fed <= MAX_REQUEST_BYTES + len(chunk)


def test_blank_lines_count_toward_the_next_request() -> None:
    request = b"a=1\n\n"
    assert len(one(b"\n" * (MAX_REQUEST_BYTES - len(request)) + request).attrs) == 1
    with pytest.raises(RequestTooLarge):
        RequestParser().feed(b"\n" * (MAX_REQUEST_BYTES - len(request) + 1) + request)
    # the same when the empty lines and the request come in separate reads
    parser = RequestParser()
    assert parser.feed(b"\n" * (MAX_REQUEST_BYTES - len(request) + 1)) == []
    with pytest.raises(RequestTooLarge):
        parser.feed(request)


def test_limits_reset_between_requests() -> None:
    raw = _request_of_size(MAX_REQUEST_BYTES)
    assert len(feed_all([raw * 3])) == 3


# --------------------------------------------------------------------------------------------
# encode_action / encode_request


@pytest.mark.parametrize(
    "action",
    [
        "OK",
        "DUNNO",
        "553 5.7.1 text",
        "451 4.3.0 text",
        "553 5.7.1 Sender address rejected: not owned by user alice@example.org",
        "REJECT",
        "DEFER_IF_PERMIT Service temporarily unavailable",
        "550  text after two spaces",
        "553 5.7.1 jörg is not the owner",
    ],
)
def test_encode_action_accepts(action: str) -> None:
    assert encode_action(action) == b"action=" + action.encode() + b"\n\n"


@pytest.mark.parametrize(
    "action",
    [
        "",
        "553",
        "  ",
        "DUNNO\r",
        "x\ny",
        "553 ",
        "553   ",
        "0",
        "1234567890",
        " OK",
        "\u2003OK",
        "OK\x00",
        "OK\ttext",
        "DUNNO\x7f",
        "REJECT \x85",
        "250 2.0.0 fine",  # numeric but not 4xx/5xx: Postfix says "unknown restriction"
        "5530 text",
        "553 5.7.1 \udcff",  # not encodable
    ],
)
def test_encode_action_rejects(action: str) -> None:
    with pytest.raises(ValueError):
        encode_action(action)


@pytest.mark.parametrize("action", ["553", "1234", "0"])
def test_encode_action_all_digits_message(action: str) -> None:
    with pytest.raises(ValueError, match="treats it as OK"):
        encode_action(action)


@pytest.mark.parametrize("action", ["553 ", "451  "])
def test_encode_action_code_without_text_message(action: str) -> None:
    with pytest.raises(ValueError, match="without text"):
        encode_action(action)


def test_encode_request_exact_bytes() -> None:
    assert encode_request({"request": "smtpd_access_policy", "sender": ""}) == (
        b"request=smtpd_access_policy\nsender=\n\n"
    )
    assert encode_request({}) == b"\n"


@pytest.mark.parametrize(
    "attrs",
    [{"": "x"}, {"a=b": "x"}, {"a\nb": "x"}, {"a": "x\ny"}, {"a": "x\r"}, {"a": "\x00"}],
)
def test_encode_request_rejects(attrs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        encode_request(attrs)


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_encode_request_reproduces_postfix_bytes(index: int) -> None:
    assert encode_request(EXPECTED[index]) == REQUESTS[index]


# --------------------------------------------------------------------------------------------
# Property tests

# Pieces that exercise the framing: line ends, CRs, '=', NUL, non-UTF-8, split UTF-8.
_PIECES = st.sampled_from(
    [b"\n", b"\r", b"\r\n", b"\n\n", b"=", b"\x00", b"a", b"b=c", b"sender=x@y", b"\xff",
     b"\xc3", b"\xa9", b"\xc3\xa9", b" ", b"request=smtpd_access_policy\n"]
)  # fmt: skip
_STREAMS = st.one_of(
    st.binary(max_size=300),
    st.lists(_PIECES, max_size=60).map(b"".join),
)

_NAME = st.text(
    st.characters(codec="utf-8", exclude_characters="=\r\n\x00"),
    min_size=1,
    max_size=20,
)
_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=40)
_ATTRS = st.dictionaries(_NAME, _VALUE, max_size=15)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=_STREAMS, cuts=st.lists(st.integers(0, 300), max_size=8))
def test_feed_raises_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    parser = RequestParser()
    try:
        for chunk in split_at(data, cuts):
            for req in parser.feed(chunk):
                assert isinstance(req, PolicyRequest)
                assert all(isinstance(k, str) and k for k in req.attrs)
    except ProtocolError as exc:
        assert exc.reason
        with pytest.raises(ProtocolError):
            parser.feed(b"a=1\n\n")


@settings(deadline=None, max_examples=400)
@given(data=_STREAMS, cuts=st.lists(st.integers(0, 300), max_size=8))
def test_feed_requests_gives_the_full_parsers_requests_as_requests(
    data: bytes, cuts: list[int]
) -> None:
    full, full_err, full_pending = outcome(split_at(data, cuts))
    fast, fast_err, fast_pending = outcome(split_at(data, cuts), requests=True)
    assert fast_err == full_err
    if full_err is None:
        assert fast == [Request.from_attrs(a).as_dict() for a in full]
        assert fast_pending == full_pending


@settings(deadline=None, max_examples=300)
@given(data=_STREAMS, cuts=st.lists(st.integers(0, 300), max_size=8))
def test_chunking_does_not_change_the_outcome(data: bytes, cuts: list[int]) -> None:
    whole_reqs, whole_err, whole_pending = outcome([data])
    chunk_reqs, chunk_err, chunk_pending = outcome(split_at(data, cuts))
    assert chunk_err == whole_err
    if whole_err is None:
        assert chunk_reqs == whole_reqs
        assert chunk_pending == whole_pending


@settings(deadline=None, max_examples=120)
@given(requests=st.lists(_ATTRS.filter(bool), min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 3000), max_size=6))  # fmt: skip
def test_encode_request_round_trips(requests: list[dict[str, str]], cuts: list[int]) -> None:
    stream = b"".join(encode_request(attrs) for attrs in requests)
    parser = RequestParser()
    assert feed_all(split_at(stream, cuts), parser) == requests
    assert not parser.pending


@settings(deadline=None, max_examples=300)
@given(action=st.text(max_size=30))
def test_encode_action_output_is_always_one_clean_line(action: str) -> None:
    try:
        out = encode_action(action)
    except ValueError:
        return
    assert out.startswith(b"action=") and out.endswith(b"\n\n")
    assert out.count(b"\n") == 2
    assert b"\r" not in out and b"\x00" not in out
    value = out[len(b"action=") : -2]
    assert value and not value.isdigit() and value[:1] != b" "
