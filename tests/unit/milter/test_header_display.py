"""policyd.header_display: the strict address-list lexer and the address-like text search."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.milter.header_display import (
    AddressListError,
    Scan,
    address_like,
    clean,
    decode_words,
    scan,
)


@pytest.mark.parametrize(
    ("value", "addrs", "texts"),
    [
        ("a@x.org", ("a@x.org",), ()),
        ("Alice <a@x.org>", ("a@x.org",), ("Alice",)),
        ('"A, B" <a@x.org>, c@y.org', ("a@x.org", "c@y.org"), ("A, B",)),
        ('"a \\" b" <a@x.org>', ("a@x.org",), ('a " b',)),
        ("(one) a@x.org (two)", ("a@x.org",), ("one", "two")),
        ("a(in)@x.org", ("a@x.org",), ("in",)),
        ("<a(in)@x.org (end)>", ("a@x.org",), ("in", "end")),
        ("A (c) B <a@x.org>", ("a@x.org",), ("c", "A (c) B", "A B")),
        ("(x (y) \\) z) a@x.org", ("a@x.org",), ("x (y) ) z",)),
        ("Team: a@x.org, b@y.org;", ("a@x.org", "b@y.org"), ("Team",)),
        ("Team:; (after)", (), ("Team", "after")),
        ('"a b"@x.org', ('"a b"@x.org',), ()),
        ('<"a:b,c"@x.org>', ('"a:b,c"@x.org',), ()),
        ("<@r1.example,@r2.example:a@x.org>", ("a@x.org",), ()),
        ("a @ x . org", ("a@x.org",), ()),
        ("Alice <a@x.org", ("a@x.org",), ("Alice",)),
        ("a@x.org,,", ("a@x.org",), ()),
    ],
)
def test_the_lexer_separates_addresses_from_display_text(
    value: str, addrs: tuple[str, ...], texts: tuple[str, ...]
) -> None:
    assert scan(value) == Scan(addrs, texts)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("a@x.org)", "')' without '('"),
        ("a@x.org>", "'>' without '<'"),
        ('"a@x.org', "unterminated quoted string"),
        ("a@x.org (x", "unterminated comment"),
        ("<a@x.org> <b@y.org>", "two <...>"),
        ("<a@x.org> b", "text after <...>"),
        ("<a@x.org>:", "':' after <...>"),
        ("A: B: a@x.org;;", "':' inside a group"),
        ("a@x.org;", "';' outside a group"),
        ("T: a@x.org", "without its ';'"),
        ("T: a@x.org; b@y.org", "text after a group's ';'"),
        ("a\\@x.org", "backslash"),
        ("<a@x.org<b@y.org>>", "'<' inside <...>"),
        ("<a\\@x.org>", "'\\\\' inside <...>"),
        ("<a:b@x.org>", "':' inside <...>"),
        ("<a@x.org,b@y.org>", "',' inside <...>"),
        ("a b@x.org", "white space inside an address"),
        ("<a@x.org b>", "white space inside an address"),
        ("=?utf-8?q?a?=@x.org", "encoded word inside an address"),
    ],
)
def test_the_lexer_refuses_what_reads_more_than_one_way(value: str, why: str) -> None:
    with pytest.raises(AddressListError) as info:
        scan(value)
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("=?utf-8?q?J=C3=B6rg_M?=", "Jörg M"),
        ("=?UTF-8?B?SsO2cmc=?=", "Jörg"),
        ("=?utf-8?b?SsO2cmc?=", "Jörg"),  # missing padding
        ("=?iso-8859-1*de?q?J=F6rg?=", "Jörg"),  # RFC 2231 language
        ("=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),
        ("=?utf-8?q?a?=\t =?utf-8?q?b?= c", "ab c"),
        ("x=?utf-8?q?=40?=y", "x@y"),
        ("=?no-such-charset?q?a?=", "=?no-such-charset?q?a?="),
        ("=?base64?q?a?=", "=?base64?q?a?="),  # not a text encoding
        # lenient, as clients are: characters outside the base64 alphabet are skipped
        ("=?utf-8?b?!!!?=", ""),
        ("=?utf-8?b?Y2Vv!QGV4YW1wbGUub3Jn?=", "ceo@example.org"),
        ("no words", "no words"),
    ],
)
def test_encoded_words_decode_where_a_client_decodes_them(text: str, decoded: str) -> None:
    assert decode_words(text) == decoded


def test_clean_shows_text_as_a_client_does() -> None:
    assert clean('"ceo\uff20exa\u200bmple\u3002org"') == "ceo@example.org"
    assert clean("\ufb01") == "fi"  # NFKC


@pytest.mark.parametrize(
    ("texts", "found"),
    [
        (["ceo@example.org"], ["ceo@example.org"]),
        (["write to ceo@example.org."], ["ceo@example.org"]),
        (["<ceo@example.org>, (b@y)"], ["ceo@example.org", "b@y"]),
        (["a@b@c"], ["a@b", "b@c"]),
        (["ceo@[192.0.2.1]"], ["ceo@[192.0.2.1]"]),
        (["ceo@[192.0.2.1"], []),
        (["@example.org", "ceo@", "ceo @ example.org", "a@.", ""], []),
        (["x@y", "x@y"], ["x@y"]),
        (["=?utf-8?q?ceo=40x?="], ["ceo@x"]),
        (["a@b =?utf-8?q?a=40b?="], ["a@b"]),
    ],
)
def test_address_like_text_is_any_at_sign_between_two_runs(
    texts: list[str], found: list[str]
) -> None:
    assert address_like(texts) == found


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('<>()@,;:"\\[]. \taxé=?qb\uff20')), max_size=60))
def test_the_lexer_raises_only_its_own_error(value: str) -> None:
    try:
        result = scan(value)
    except AddressListError as e:
        assert str(e)
        return
    for addr in address_like(result.display_texts):
        local, _, domain = addr.rpartition("@")
        assert local and domain
