"""Spend, budgets, suspensions, the per-request ledger, and the spool for Redis outages.

Modules, one job each::

    periods        UTC days/months, the money unit (integer micro-dollars), timestamps
    keyspace       every Redis key name of this package
    entry          LedgerEntry: one booked request (stream fields, spool line, export record)
    scripts        the Lua scripts: BOOK, RESERVE, RELEASE_EXPIRED, CONTROL_WRITE, KEY_BUDGET
    writer         LedgerWriter: bookings -> Redis in batches, or the spool; replay; degraded mode
    spool          Spool: bounded append-only JSONL files with an fsync policy
    budgets        Budget, Suspension values; BudgetStore: the admin operations
    controls       Controls: each replica's cache of budgets and suspensions (pub/sub + poll)
    admission      AdmissionControl: suspension and budget checks (reservations) at the gate;
                   PendingAdmissions: admitted requests not booked yet (lost observations)
    service        Ledger: the above wired together for `tokenbook serve`, background tasks
    reader         reading the ledger stream (tail, follow, time ranges)
    command, budget_command, agents_command, cli_support
                   ``tokenbook ledger``, ``tokenbook budgets``, ``tokenbook agents``

Documented bounds and choices: money unit and periods in `periods`; budget overrun bound and
why admission records are kept in memory in `admission`; exactly-once replay, degraded mode and
health in `writer`; spool size and fsync policy in `spool`; "within one second" in `controls`.

Failure policy (DESIGN.md)::

    Redis unreachable
    ├── booking            -> spool (replayed once when Redis is back); spool full -> counted in
    │                         tokenbook_ledger_dropped_total{reason}, never silent
    ├── budget check       -> fail open: admitted, counted in
    │                         tokenbook_budget_checks_skipped_total; budgets already known to be
    │                         used up keep refusing (cached)
    ├── suspensions        -> the last known set stays in force
    └── unbooked verdict   -> spooled like any booking, decided by the script at replay
"""
