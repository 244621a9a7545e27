"""Decision -> the action bytes Postfix reads: the one place (the writer side of the codec).

`encode_decision` is what every front end that answers Postfix calls (the socket server and
`serve --stdio`): it never sends an action Postfix would misread, and turns one it refuses into
the internal-error 451 instead, logged.
"""

from __future__ import annotations

import logging
import re
from typing import Final

from policyd.core.decision import Decision, Reason, Verdict, to_action

log: Final = logging.getLogger("policyd.actions")  # (not __name__: the name admins grep)

#: What a request gets when deciding it failed (a bug): a retry later, never a pass.
INTERNAL_ERROR: Final = Decision(
    Verdict.DEFER,
    Reason.INTERNAL_ERROR,
    "451 4.3.0 Temporary policy failure, please try again later",
)

#: Encoded accept actions (OK, DUNNO, ...): a handful of constant words, encoded once.
_PAYLOADS: Final[dict[str, bytes]] = {}
_CONSTANT_ACTIONS: Final = (Verdict.ACCEPT, Verdict.DUNNO)


def encode_decision(decision: Decision) -> bytes:
    """``b"action=...\n\n"`` for the decision; an action that encode_action refuses is
    logged and answered with INTERNAL_ERROR's 451 instead."""
    action = to_action(decision)
    payload = _PAYLOADS.get(action)
    if payload is not None:
        return payload
    try:
        payload = encode_action(action)
    except ValueError:
        log.error("refusing to send invalid action %r; deferring instead", action)
        return encode_action(INTERNAL_ERROR.reply)
    # Reject texts name the sender: not kept.
    if decision.verdict in _CONSTANT_ACTIONS and len(_PAYLOADS) < 64:
        _PAYLOADS[action] = payload
    return payload


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def encode_action(action: str) -> bytes:
    """Encode a reply: ``b"action=<action>\\n\\n"``.

    Raises ValueError for what Postfix would misread (check_table_result in smtpd_check.c):
    an empty or blank action; leading whitespace (the verb would be empty); any control
    character (CR, LF, NUL, TAB, ...), which would break the framing or end up in the reply;
    an all-digit action such as ``553`` (Postfix treats it as OK!); a numeric verb that is not
    a 4xx/5xx code, or a 4xx/5xx code without text (both become "451 4.3.5 Server
    configuration error"); text that is not encodable as UTF-8.
    """
    if not action or action.isspace():
        raise ValueError("empty action")
    # (C0, DEL and C1 are all unprintable: the regex only for a text with something unprintable)
    if not action.isprintable() and _CONTROL.search(action):
        raise ValueError(f"control character in action {action!r}")
    if action[0].isspace():
        raise ValueError(f"leading whitespace in action {action!r}")
    verb, _, text = action.partition(" ")
    if verb.isascii() and verb.isdigit():  # (isascii: only 0-9, as a regex [0-9]+ would)
        if verb == action:
            raise ValueError(
                f"all-digit action {action!r}: Postfix treats it as OK, "
                "use '<code> <text>' such as '553 5.7.1 text'"
            )
        if len(verb) != 3 or verb[0] not in "45":
            raise ValueError(f"numeric action {action!r} is not a 4xx or 5xx code")
        if not text.strip(" "):
            raise ValueError(f"SMTP code without text in action {action!r}")
    try:
        encoded = action.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"action {action!r} is not valid UTF-8 text") from exc
    return b"action=" + encoded + b"\n\n"
