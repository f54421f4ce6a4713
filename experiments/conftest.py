"""pytest hooks of ``pytest experiments/``: rebuild experiments/RESULTS.md from results/*.json at session end, and
after a paper-tier session (CLIPCORE_FULL=1) the write-up paper/paper.md, which reads the paper tier."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def pytest_sessionfinish(session, exitstatus):
    from experiments.common import FULL, write_results_md
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    say = tr.write_line if tr is not None else (lambda line, **_: print(line))
    out = write_results_md()
    if out is not None:
        say(f"experiments: wrote {out}")
    if FULL:
        path = Path(__file__).resolve().parents[1] / "paper" / "build.py"
        spec = importlib.util.spec_from_file_location("paper_build", path)
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)
        if build.main([]) != 0:             # the results changed what the text assumes: the text needs a reader
            say("experiments: paper/paper.md NOT rebuilt (the reason is printed above)", red=True)
