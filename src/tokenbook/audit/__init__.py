"""The token-ROI audit (`tokenbook audit`): who spends, how efficiently, on what, unattributed.

    sources.py / ledger.py ──► AuditRecord rows ──► analysis.analyse ──► AuditReport ──► render
    (metrics, Prometheus,       (model.py)                                 (model.py)     (table,
     the Redis ledger)                                                                    json, csv,
                                                                                          markdown)

`command` is the CLI glue. The JSON schema is documented in `tokenbook.audit.model`.
"""
