"""Link tokens and codes. Only their hashes are stored; comparisons take constant time.

- Token: 256 bits from `secrets`, URL-safe; stored as SHA-256 (a high-entropy secret needs no
  slow hash), looked up by that hash.
- Code: 8 decimal digits from `secrets`; stored as SHA-256 over a per-request random salt and
  the code, checked with hmac.compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_BYTES = 32
CODE_DIGITS = 8

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def new_token() -> tuple[str, str]:
    """(token for the link, its hash to store)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def plausible_token(token: str) -> bool:
    """Shape check before any lookup (43 URL-safe characters)."""
    return isinstance(token, str) and bool(_TOKEN_RE.match(token))


def new_code() -> tuple[str, str, str]:
    """(code for the mail, salt, hash to store)."""
    code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    salt = secrets.token_hex(16)
    return code, salt, code_hash(salt, code)


def code_hash(salt: str, code: str) -> str:
    return hashlib.sha256(f"{salt}:{code}".encode("ascii", "replace")).hexdigest()


def normalize_code(code: str) -> str | None:
    """The digits of a typed code (spaces and dashes allowed), or None if it is not 8 digits."""
    digits = re.sub(r"[\s-]", "", code or "")
    if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def code_matches(code: str, salt: str, stored_hash: str) -> bool:
    """Constant-time comparison of a typed code with the stored hash."""
    digits = normalize_code(code)
    candidate = code_hash(salt, digits if digits is not None else "x" * CODE_DIGITS)
    ok = hmac.compare_digest(candidate, stored_hash)
    return ok and digits is not None
