"""Per-login sending quotas and compromised-login detection (issue 28).

    (the [quotas] section: policyd/config/quotas.py)
    store.py     the counters' one interface (QuotaStore), the algorithm (GCRA), the in-memory
                 store
    backend.py   `create_store`: the one place a backend is chosen
    redis_store.py  the same algorithm as one Lua script on a Valkey/Redis server
    resp.py      the scripts' own lean connection: one loop iteration's checks in one write
    guard.py     the store behind a timeout and a circuit breaker, falling back to memory
    service.py   the front end's hooks: RCPT (recipient cap, early answer), END-OF-MESSAGE
                 (count once, or refuse), suspensions, the decision and its numbers
    current.py   the QuotaService of the running config, kept across reloads; the milter's side
    compromise.py  signals (networks, bursts, not-owned refusals, null senders) -> suspension
    notify.py    the admin's mail, through the verification mail's submission path

Kept import-light: policyd.config reads the section itself (config/quotas.py); redis is
imported only when a shared store is configured.
"""
