"""The demo behind ``make run``: a discovery workload on four rate-limited platforms."""
