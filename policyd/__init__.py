"""policyd: a Postfix policy daemon that relays only for allocated networks or SASL logins,
and only for sender addresses the login owns."""

__version__ = "0.1.0"
