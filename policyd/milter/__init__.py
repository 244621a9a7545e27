"""`policyd milter`: the header From: check (a logged-in user may only write addresses they own).

headers + header_display (From:/Sender:/Resent-* -> mailboxes, read three ways), decide
(author headers -> lookups -> Decision), libmilter (the pymilter adapter and `run_milter`).
Importing this package imports no pymilter: only libmilter does, and `policyd milter` turns
its ImportError into an install hint.
"""
