"""pytest hooks of ``pytest experiments/``: rebuild experiments/RESULTS.md from results/*.json at session end."""
from __future__ import annotations


def pytest_sessionfinish(session, exitstatus):
    from experiments.common import write_results_md
    out = write_results_md()
    if out is not None:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"experiments: wrote {out}")
