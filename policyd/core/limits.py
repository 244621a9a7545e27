"""Hard limits, in one place, each with the reason for its value."""

from typing import Final

# A real Postfix 3.x request is ~30 attributes and ~700 bytes; the longest single values are
# addresses (RFC 5321: 256 octets for a path) and ccert_* fingerprints/subjects. 8 KiB per line
# leaves a wide margin for legitimate values while stopping a peer that streams without LF.
MAX_LINE_BYTES: Final = 8 * 1024

# Whole request (all lines up to the blank line). 40 attributes of maximal length would still be
# far below this; anything larger is not Postfix and the connection is closed unanswered.
MAX_REQUEST_BYTES: Final = 64 * 1024

# Attribute count per request: Postfix 3.12 sends 33. 1,000 bounds the per-request dict work.
MAX_ATTRIBUTES: Final = 1000

# Postfix closes an idle policy connection after smtpd_policy_service_max_idle (300 s). Our idle
# timeout must be longer so Postfix, not we, decides when an idle connection ends (a server-side
# close races with the next request and costs Postfix a retry_delay).
DEFAULT_IDLE_TIMEOUT: Final = 330.0

# Postfix's own timeout for one policy round trip is 100 s; a directory lookup must end long
# before that so the client gets our 451 rather than Postfix's default_action.
DEFAULT_LOOKUP_DEADLINE: Final = 3.0

# How long SIGTERM waits for in-flight requests before closing connections. systemd's
# TimeoutStopSec in systemd/policyd.service must be larger than this.
DEFAULT_DRAIN_TIMEOUT: Final = 10.0

# Concurrent client connections. Each smtpd process holds one connection; 1,000 covers a busy
# host (default_process_limit is 100 per service) while bounding fds and memory.
DEFAULT_MAX_CONNECTIONS: Final = 1000

# Threads that run blocking directory calls (ldap3 is synchronous). ldap3 is GIL-bound (its
# cost per search: bench/RESULTS.md), so more threads only queue; a few cover one hung call
# per server.
DEFAULT_LOOKUP_THREADS: Final = 4

# Longest reply text we send: Postfix cuts the final SMTP reply at 510 characters.
MAX_REPLY_TEXT: Final = 450
