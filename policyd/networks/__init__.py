"""Allocated ranges: the address ranges the operator allocated to its own customers.

A client whose address lies in one of them may relay without SMTP AUTH (optionally only for
some sender domains). This module loads the range files and answers "which range, if any,
contains this client address?" in a few microseconds, independent of the number of ranges.

File format (UTF-8; ``#`` starts a comment, whole-line or trailing; blank lines are ignored)::

    PATTERN [LABEL] [domains=example.org,example.net]
    !PATTERN

PATTERN is one of

- a CIDR, IPv4 or IPv6, the address optionally in brackets: ``192.0.2.0/24``,
  ``2001:db8::/32``, ``[2001:db8::]/32``. Host bits must be clear (``10.1.2.3/8`` is an error,
  as it is in Postfix);
- a range ``FIRST-LAST`` of two addresses of one family: ``192.0.2.10-192.0.2.20``,
  ``2001:db8::10-2001:db8::1f`` (each end optionally bracketed);
- an IPv4 glob (netaddr syntax): ``192.0.2.*``, ``192.0.2-3.*``, ``192.0.2.10-20``;
- a single address: ``192.0.2.1``, ``2001:db8::1``, ``[2001:db8::1]``.

IPv4 octets with a leading zero (``010.0.0.1``) are rejected: Postfix reads them as octal, most
other software as decimal. An IPv6 pattern that lies entirely inside the IPv4-mapped block
``::ffff:0:0/96`` is stored as the IPv4 range it maps, because mapped client addresses are
looked up as IPv4 (as Postfix itself does).

``!PATTERN`` excludes those addresses from every range, whatever the order of the lines and
whichever file they are in. LABEL (default: the pattern as written) names the range in logs and
replies. ``domains=`` restricts unauthenticated senders from the range to those sender domains.

Overlaps: the **most specific** range containing an address wins, i.e. the one covering the
fewest addresses; among ranges of equal size the one written **later** wins (later line; with
several files, a later file is later). Its label and domains apply.

Implementation (this package):

- ``patterns``: the general parser of one line, with the reason when a line is bad;
  :class:`Range` and :class:`NetworksError`.
- ``loader``: reads the files; plain CIDR and address lines take a fast path (``inet_pton``
  and int arithmetic into one int per line, no object per line); everything else goes through
  ``patterns``. Lines are kept, so labels, fields and Range objects are built only for the
  ranges a lookup returns.
- ``sweep``: a sweep over the sorted starts (a heap ordered by specificity, exclusions first)
  compiles every family into sorted, disjoint integer intervals, each pointing to the line of
  its winning range.
- ``table``: :class:`Networks`; a lookup is ``inet_pton`` + ``int.from_bytes`` + ``bisect``
  over arrays, a few µs at most (bench/RESULTS.md has the figures, and netaddr's ``IPSet``
  for comparison: far slower per address, and ``IPSet.add`` in a loop is quadratic).
"""

from policyd.networks.patterns import NetworksError, Range
from policyd.networks.table import Networks

__all__ = ["Networks", "NetworksError", "Range"]
