"""The quota checks' own RESP2 connection (policyd/quotas/resp.py): encoding, the reply
parser, the store URL. Against a real server: tests/integration/test_quota_store.py."""

from __future__ import annotations

import pytest

from policyd.quotas.resp import RespError, _Call, _Incomplete, pack, parse, sha


def test_pack_is_resp_arrays_of_bulk_strings() -> None:
    assert pack(["EVALSHA", "ab", 2, "k:{é}", 1.5]) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$6\r\nk:{\xc3\xa9}\r\n$3\r\n1.5\r\n"
    )
    # (numbers are cached by value: the same bytes again, whatever came between; an int and
    # the float equal to it share one, as they are one number to Lua 5.1)
    assert pack([1234567.5, 1234567.5, 7]) == (
        b"*3\r\n$9\r\n1234567.5\r\n$9\r\n1234567.5\r\n$1\r\n7\r\n"
    )
    with pytest.raises(TypeError):
        pack([b"bytes"])  # type: ignore[list-item]


def test_a_script_call_is_the_command_pack_makes() -> None:
    """The calls' commands are built from a cached head (EVALSHA and the SHA1, or EVAL and the
    script after NOSCRIPT) and the keys and arguments: byte for byte what pack() makes."""
    script = "return {KEYS[1], ARGV[1]} -- é"
    keys = ["policyd:{alice}:suspended", "policyd:{ä}:q:messages_per_hour"]
    args: list[str | int | float] = ["1", "0", 600000, 3600000.0, 100, 1]
    call = _Call("charge", script, keys, args, None)  # type: ignore[arg-type]
    for _ in range(2):  # (the second time from the cache)
        want = pack(["EVALSHA", sha(script), len(keys), *keys, *args])
        assert call.command().encode() == want
    call.again = True
    for _ in range(2):
        assert call.command().encode() == pack(["EVAL", script, len(keys), *keys, *args])
    empty = _Call("usage", script, [], [], None)  # type: ignore[arg-type]
    assert empty.command().encode() == pack(["EVALSHA", sha(script), 0])


def test_parse_every_reply_kind() -> None:
    buf = (
        b":0\r\n$3\r\nabc\r\n$-1\r\n*3\r\n:1\r\n$2\r\nhi\r\n*1\r\n+OK\r\n-NOSCRIPT No matching\r\n"
    )
    out = []
    pos = 0
    while pos < len(buf):
        v, pos = parse(buf, pos)
        out.append(v)
    assert out == [0, "abc", None, [1, "hi", ["OK"]], "NOSCRIPT No matching"]
    assert isinstance(out[-1], RespError)
    assert not isinstance(out[1], RespError)


@pytest.mark.parametrize(
    "cut", [b":1", b"$3\r\nab", b"$3\r\nabc", b"*2\r\n:1\r\n", b"*2\r\n:1\r\n$1\r\n"]
)
def test_parse_waits_for_the_rest(cut: bytes) -> None:
    with pytest.raises(_Incomplete):
        parse(cut, 0)


def test_parse_refuses_what_is_not_resp() -> None:
    with pytest.raises(ValueError, match="not a RESP2 reply"):
        parse(b"HTTP/1.1 400\r\n", 0)
