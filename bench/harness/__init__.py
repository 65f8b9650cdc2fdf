"""The pieces of `bench/run.py` (issue #9): processes, wrk, the vault's data, cases, report and chart.

Each module is small and importable on its own; `bench/run_http.py` and `bench/two_instances.py`
reuse the process and wrk helpers.
"""
