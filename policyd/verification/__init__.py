"""Extra sender addresses a user proves are theirs (issue 13).

normalize (which addresses may be requested), states (the
state machine as a table), tokens (link tokens and codes), store (SQLite: requests, audit,
suppression list, rate counters), mail (the confirmation mail), ldap_writer (store = "ldap"),
service (the API front ends use: Verification, composed of ownership, ledger, writes,
sending, user and admin), source (verified addresses behind the lookups); its command line is
policyd.cli.senders. Its [verification] section is policyd.config.verification.
Importing this package imports nothing else.
"""
