"""A policy request as the policy service reads it: the attributes a decision and its log line
use, as named fields. Pure data.

The socket server keeps nothing else of a request (protocol.RequestParser.feed_requests finds
these attributes in the bytes and leaves the others unsplit); `policyd check` and the tests
build one with `Request.from_attrs` or by name. An attribute Postfix did not send is "" (as
Postfix itself sends for an unavailable value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

#: The attributes a Request holds: every one that policyd.core.engine, policyd.policy.service and
#: policyd.decision_log read (they read them as fields, so the type checker finds any other).
DECISION_ATTRIBUTES: Final[tuple[str, ...]] = (
    "request",
    "protocol_state",
    "client_address",
    "sasl_username",
    "sender",
    "recipient",
    "queue_id",
    "instance",
    "server_port",
    "policy_context",
    # END-OF-MESSAGE (and DATA): what the quotas count (policyd.quotas)
    "recipient_count",
    "size",
)


class Request:
    """The DECISION_ATTRIBUTES of one request. Read-only once built.

    A plain class with slots, not a dict: compiled (mypyc) it is a native class, whose fields
    are read without a lookup by name; a request is built for every decision.
    """

    __slots__ = (*DECISION_ATTRIBUTES, "printable")

    def __init__(
        self,
        request: str = "",
        protocol_state: str = "",
        client_address: str = "",
        sasl_username: str = "",
        sender: str = "",
        recipient: str = "",
        queue_id: str = "",
        instance: str = "",
        server_port: str = "",
        policy_context: str = "",
        recipient_count: str = "",
        size: str = "",
        printable: bool = False,
    ) -> None:
        self.request: Final = request
        self.protocol_state: Final = protocol_state
        self.client_address: Final = client_address
        self.sasl_username: Final = sasl_username
        self.sender: Final = sender
        self.recipient: Final = recipient
        self.queue_id: Final = queue_id
        self.instance: Final = instance
        self.server_port: Final = server_port
        self.policy_context: Final = policy_context
        self.recipient_count: Final = recipient_count
        self.size: Final = size
        #: True when the parser found no control character (C0 or DEL) in any value, so the
        #: decision log line need not look for them; False when not known. Not part of the
        #: request's value (not compared).
        self.printable: Final = printable

    @staticmethod
    def from_attrs(attrs: Mapping[str, str]) -> Request:
        """The request of these attributes (every attribute of a request, or some)."""
        g = attrs.get
        return Request(
            g("request", ""),
            g("protocol_state", ""),
            g("client_address", ""),
            g("sasl_username", ""),
            g("sender", ""),
            g("recipient", ""),
            g("queue_id", ""),
            g("instance", ""),
            g("server_port", ""),
            g("policy_context", ""),
            g("recipient_count", ""),
            g("size", ""),
        )

    def as_dict(self) -> dict[str, str]:
        """The attributes by name (all of DECISION_ATTRIBUTES, "" for those not sent)."""
        return {
            "request": self.request,
            "protocol_state": self.protocol_state,
            "client_address": self.client_address,
            "sasl_username": self.sasl_username,
            "sender": self.sender,
            "recipient": self.recipient,
            "queue_id": self.queue_id,
            "instance": self.instance,
            "server_port": self.server_port,
            "policy_context": self.policy_context,
            "recipient_count": self.recipient_count,
            "size": self.size,
        }

    def get(self, name: str, default: str = "") -> str:
        """An attribute by name, as from a mapping (for decision hooks): `default` when the
        value is empty or the name is not one a Request holds."""
        value = self.as_dict().get(name, "")
        return value or default

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items() if v)
        return f"Request({fields})"
