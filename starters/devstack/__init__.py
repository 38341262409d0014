"""`cardflow dev up | down | status`: the embedded stack on one machine.

Temporal's dev server (SQLite), PostgreSQL, one worker per task queue and the
codec server run as background processes with their state and logs under
CARDFLOW_HOME (default `.cardflow/`).
"""
