"""Which addresses a user may ask to verify, in which form. Pure: no I/O.

The form is the ownership form (addresses.normalize_address: case folded, IDN domain to its
A-labels), after a stricter syntax check than ownership needs, because the address is typed by
a user and a mail is sent to it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from policyd.addresses import (
    AddressRules,
    InvalidDomain,
    idna_domain,
    normalize_address,
    normalize_domain,
    split_address,
)

#: RFC 5321: 254 octets for a path's address, 64 for a local part, 63 per DNS label.
MAX_ADDRESS = 254
MAX_LOCAL = 64
MAX_LABEL = 63

_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LDH = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class BadAddress(ValueError):
    """Why an address cannot be requested: `code` (a Refused code) and a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _scripts(label: str) -> set[str]:
    out = set()
    for ch in label:
        if ch.isascii() and (ch.isdigit() or ch == "-"):
            continue
        name = unicodedata.name(ch, "")
        out.add(name.split(" ", 1)[0] if name else "?")
    return out


def _domain(raw: str) -> str:
    if not raw:
        raise BadAddress("bad_syntax", "The address has no domain (user@example.net).")
    if raw.startswith("["):
        raise BadAddress("bad_syntax", "Address literals ([1.2.3.4]) are not accepted.")
    if raw.endswith("."):
        raw = raw[:-1]
    labels = raw.split(".")
    if len(labels) < 2:
        raise BadAddress("bad_syntax", "The domain needs at least one dot (example.net).")
    out = []
    for label in labels:
        if not label.isascii():
            # Unicode labels: one script per label, and no compatibility forms (fullwidth
            # letters, ligatures) that fold to other letters: those are how look-alike
            # domains are made.
            if unicodedata.normalize("NFKC", label) != label or label != label.lower():
                raise BadAddress(
                    "confusable",
                    "The domain contains characters that look like other characters; "
                    "type it in its plain form.",
                )
            if len(_scripts(label)) > 1:
                raise BadAddress(
                    "confusable",
                    "A part of the domain mixes alphabets (for example Latin and Cyrillic "
                    "letters that look alike); this is not accepted.",
                )
        try:
            # IDNA 2008 / UTS #46 non-transitional: "ß", final sigma, ZWJ/ZWNJ are kept (a
            # different registered domain), not folded to "ss", "σ" or nothing as IDNA 2003 did
            a = idna_domain(label)
        except InvalidDomain:
            raise BadAddress("bad_syntax", "The domain is not a valid domain name.") from None
        if not a.isascii() or not _LDH.match(a):
            raise BadAddress("bad_syntax", "The domain is not a valid domain name.")
        out.append(a)
    if out[-1].isdigit():
        raise BadAddress("bad_syntax", "The domain is not a valid domain name.")
    return ".".join(out)


def normalize_request(address: str, rules: AddressRules) -> str:
    """The normalised address, or BadAddress(code, message). Accepts surrounding spaces and
    angle brackets; refuses display names, quoted local parts, comments, control characters,
    non-ASCII local parts, "%" and "!" in the local part, look-alike domains, domains IDNA
    2008 refuses and anything over 254 octets."""
    if not isinstance(address, str):
        raise BadAddress("bad_syntax", "The address must be text.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in address):
        raise BadAddress(
            "control_characters",
            "The address contains line breaks or other control characters.",
        )
    if len(address.encode("utf-8", "surrogatepass")) > 4 * MAX_ADDRESS:
        raise BadAddress("too_long", f"The address is longer than {MAX_ADDRESS} characters.")
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    if not a:
        raise BadAddress("bad_syntax", "No address given.")
    if len(a.encode("utf-8", "surrogatepass")) > MAX_ADDRESS:
        raise BadAddress("too_long", f"The address is longer than {MAX_ADDRESS} octets.")
    if a.startswith('"') or '"' in a:
        raise BadAddress("bad_syntax", 'Quoted local parts ("...") are not accepted.')
    if any(ch in a for ch in "<>()[],;: \t\\") and not a.startswith("["):
        raise BadAddress(
            "bad_syntax",
            "Give the address alone (user@example.net), without a name, comment or spaces.",
        )
    if a.count("@") != 1:
        raise BadAddress("bad_syntax", "An address has exactly one @ (user@example.net).")
    local, domain = split_address(a)
    if not local:
        raise BadAddress("bad_syntax", "The address has no user part before the @.")
    if not local.isascii():
        raise BadAddress(
            "bad_syntax", "Only plain (ASCII) letters, digits and . _ - + are accepted before @."
        )
    if not _ATEXT.match(local):
        raise BadAddress("bad_syntax", "The part before the @ is not a valid mailbox name.")
    if "%" in local or "!" in local:
        # routing on many MTAs, ours included (percent hack, bang paths: addresses.route_address)
        raise BadAddress(
            "bad_syntax", 'The part before the @ may not contain "%" or "!" (mail routing).'
        )
    if len(local) > MAX_LOCAL:
        raise BadAddress("too_long", f"The part before the @ is longer than {MAX_LOCAL} octets.")
    dom = _domain(domain)
    norm = normalize_address(f"{local}@{dom}", rules)
    if len(norm.encode("ascii")) > MAX_ADDRESS:
        raise BadAddress("too_long", f"The address is longer than {MAX_ADDRESS} octets.")
    return norm


def in_domains(address: str, domains: Iterable[str]) -> bool:
    """True when the address is in one of the domains or a subdomain of one."""
    dom = split_address(address)[1]
    for d in domains:
        d = normalize_domain(d)
        if dom == d or dom.endswith("." + d):
            return True
    return False
