"""`policyd web`: the self-service page for extra sender addresses.

Its own process (systemd/policyd-web.service), so nothing a browser does can slow down or crash
the policy service. aiohttp.web + Jinja2 (autoescape), server-rendered forms that work with
JavaScript off. Its [web] section is policyd.config.web. Modules:

- sessions: server-side sessions and login throttling in SQLite (own, versioned tables).
- auth:     logging in (LDAP bind as the user's own entry; trusted proxy header).
- security: response headers, CSRF tokens, form parsing with size limits.
- backend:  the blocking calls (Verification API, directory) in threads with a deadline.
- context:  what every handler uses (state, client address, render, redirect, form fields).
- pages:    the address pages and the confirmation-link landing page.
- app:      the aiohttp application (routes, middleware, login/logout).
- server:   `policyd web`: config, logging, listen, run until SIGTERM.
"""
