"""`policyd serve`: the Postfix policy delegation server (socket or `--stdio`).

protocol + fastpath (the sans-IO codec), actions (Decision -> the action bytes Postfix reads),
service (request -> facts -> Decision), connection + server (asyncio listeners, batching,
drain), stdio (Postfix spawn(8)), app (the lifecycle: load -> start -> ready -> wait -> stop;
reload), metrics (Prometheus).
"""
