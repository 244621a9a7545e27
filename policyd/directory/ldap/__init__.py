"""The LDAP directory backend, one module per job:

* filters: escaping values, filling filter templates, the reverse group filter, DN helpers;
* entries: the addresses and logins a search-result entry holds;
* connection: server URLs, TLS, the bind password, opening one connection, describing errors;
* directory: LdapDirectory, the lookups with failover between servers;
* diagnose: check_connection, the `config-check --connect` walk.

The names below are the package's public interface (import them from here).
"""

from policyd.directory.ldap.connection import ServerSpec, parse_server_url, read_bind_password
from policyd.directory.ldap.diagnose import check_connection
from policyd.directory.ldap.directory import LdapDirectory
from policyd.directory.ldap.filters import default_group_base, escape_value, render_filter

__all__ = [
    "LdapDirectory",
    "ServerSpec",
    "check_connection",
    "default_group_base",
    "escape_value",
    "parse_server_url",
    "read_bind_password",
    "render_filter",
]
