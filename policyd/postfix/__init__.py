"""The live Postfix, as `postconf` shows it: what `policyd postfix-lines` adds to it and what
`policyd config-check --postfix` finds wrong in it.

Everything is read through `postconf` (main.cf: `postconf`, `postconf -n`; master.cf:
`postconf -M`, `postconf -P`), so the values are the ones Postfix itself uses. Nothing here
writes a file: postfix-lines prints `postconf -e` / `postconf -P` commands that INSERT our
policy service and milter into the lists the admin has, never replace a list or a setting.
"""
