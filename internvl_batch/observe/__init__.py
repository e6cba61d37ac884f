"""Seeing a run: live progress (progress.py) and its time series (timeline.py), metrics
through Ray's metrics API (metrics.py), the run report (report_data.py gathers, report.py
renders), and the pre-flight plan (preflight.py, with header-only media reads in headers.py)."""
