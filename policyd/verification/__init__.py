"""Extra sender addresses a user proves are theirs (issue 13).

normalize (which addresses may be requested), states (the
state machine as a table), tokens (link tokens and codes), store (SQLite: requests, audit,
suppression list, rate counters), mail (the confirmation mail), ldap_writer (store = "ldap"),
service (the API front ends use), source (verified addresses behind the lookups), cli
(`policyd senders ...`). Its [verification] section is policyd.config.verification.
Importing this package imports nothing else.
"""
