"""Shared machinery of ``pytest experiments/``: tiers, seeds, confidence intervals, result JSON, figures and
the generated ``experiments/RESULTS.md``.

Every claim test does the same four things:

    vals = [run(seed) for seed in seeds()]                      # quick tier: 3 seeds, full tier: 5+
    ci = mean_ci(vals)                                          # mean and 95% t-interval
    res = save_result("THY-3", claim=..., prediction=..., threshold=..., measured=ci, verdict=..., ...)
    conclude(res)                                               # passes only on "holds"; else xfail with the number

The JSON schema (one file per claim, ``results/<ID>.json``; the paper tier's in ``results/full/``) is what
RESULTS.md, the notebooks and paper/ read:
{id, paper, claim, prediction, threshold, measured: {mean, lo, hi, n, values}, measured_text, verdict, tier,
 seeds, note, details, figure, wall_s}. Tests of other papers may use the same helpers; the table takes every JSON
file in ``results/`` that has the keys id, claim, prediction, measured_text, verdict and tier.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FULL = os.environ.get("CLIPCORE_FULL", "") not in ("", "0")
TIER = "full" if FULL else "quick"
HERE = Path(__file__).resolve().parent
QUICK_RESULTS = HERE / "results"
RESULTS = QUICK_RESULTS / "full" if FULL else QUICK_RESULTS   # the paper tier keeps its own files beside the quick one
RESULTS_MD = HERE / "RESULTS.md"
VERDICTS = ("holds", "fails", "inconclusive")


def tier(quick, full):
    """The quick-tier value, or the full-tier one under CLIPCORE_FULL=1."""
    return full if FULL else quick


def seeds(quick: int = 3, full: int = 5) -> list[int]:
    return list(range(tier(quick, full)))


# ----------------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], conf: float = 0.95) -> dict:
    """Mean and two-sided t-interval over seeds: {mean, lo, hi, half, n, values}. n = 1 gives an infinite half-width."""
    from scipy.stats import t as student_t
    v = np.asarray([float(x) for x in values], dtype=float)
    n = len(v)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(v.mean())
    half = float(student_t.ppf(0.5 + conf / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "n": n, "values": v.tolist()}


def fmt_ci(ci: dict, digits: int = 3) -> str:
    """'0.123 ± 0.010 (n=3)'."""
    return f"{ci['mean']:.{digits}g} ± {ci['half']:.2g} (n={ci['n']})"


def verdict_from_ci(ci: dict, lower: float | None = None, upper: float | None = None) -> str:
    """'holds' when the whole CI lies strictly inside (lower, upper); 'fails' when it lies wholly outside (a
    degenerate CI sitting exactly on the bound, e.g. 0 +- 0 against "> 0", fails); else 'inconclusive'."""
    lo, hi = ci["lo"], ci["hi"]
    lower = -math.inf if lower is None else lower
    upper = math.inf if upper is None else upper
    if lo > lower and hi < upper:
        return "holds"
    if hi <= lower or lo >= upper:
        return "fails"
    return "inconclusive"


# ----------------------------------------------------------------------------- results
def figure_path(claim_id: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{claim_id}.png"


def savefig(fig, claim_id: str) -> str:
    path = figure_path(claim_id)
    fig.savefig(path, dpi=110, bbox_inches="tight")      # "tight" keeps suptitles and outside legends
    plt.close(fig)
    return path.name


def save_result(claim_id: str, *, claim: str, prediction: str, threshold: str, measured: dict, verdict: str,
                measured_text: str | None = None, details: dict | None = None, figure: str | None = None,
                seeds: Sequence[int] = (), wall_s: float | None = None, paper: str = "theory",
                note: str = "") -> dict:
    """Write results/<claim_id>.json and return the record. ``note``: a short reading of the result (listed
    under the table), never a change of the verdict."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    rec = {"id": claim_id, "paper": paper, "claim": claim, "prediction": prediction, "threshold": threshold,
           "measured": measured, "measured_text": measured_text or fmt_ci(measured), "verdict": verdict,
           "tier": TIER, "seeds": list(seeds), "note": note, "details": details or {}, "figure": figure,
           "wall_s": None if wall_s is None else round(wall_s, 1), "date": time.strftime("%Y-%m-%d")}
    (RESULTS / f"{claim_id}.json").write_text(json.dumps(rec, indent=1, default=_jsonable) + "\n")
    return rec


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def conclude(rec: dict) -> None:
    """A claim test's last line: pass on 'holds'; otherwise xfail with the measured number (never a silent pass)."""
    if rec["verdict"] != "holds":
        pytest.xfail(f"{rec['id']} {rec['verdict']} at the {rec['tier']} tier: measured {rec['measured_text']}; "
                     f"pre-registered: {rec['threshold']}")


# ----------------------------------------------------------------------------- RESULTS.md
def _id_key(claim_id: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", claim_id)]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _records(results: Path) -> list[dict]:
    recs = []
    for f in sorted(results.glob("*.json")) if results.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and {"id", "claim", "prediction", "measured_text", "verdict", "tier"} <= rec.keys():
            recs.append(rec)
    return recs


def write_results_md(results: Path = QUICK_RESULTS, out: Path = RESULTS_MD) -> Path | None:
    """Rebuild the claims table from every result JSON in ``results`` (quick tier) and ``results/full`` (paper
    tier: its row follows the quick row of the same claim); None when there is none."""
    recs = _records(results) + _records(results / "full")
    if not recs:
        return None
    recs.sort(key=lambda r: (_id_key(r["id"]), r["tier"] != "quick"))
    lines = ["# Results of `pytest experiments/`", "",
             "Generated by `experiments/conftest.py` at the end of every `pytest experiments/` session from "
             "`experiments/results/*.json` (quick tier: `pytest experiments/`) and `experiments/results/full/*.json` "
             "(paper tier: `CLIPCORE_FULL=1 pytest experiments/...`); do not edit by hand. Measured values are the "
             "mean ± the half-width of the 95% t-interval over seeds; each row's figure is `results/<id>.png` "
             "(`results/full/<id>.png`).", "",
             "| id | paper claim | prediction (pre-registered) | measured (mean ± 95% CI, n seeds) | verdict | tier |",
             "|---|---|---|---|---|---|"]
    for r in recs:
        pred = r["prediction"] + (f" — threshold: {r['threshold']}" if r.get("threshold") else "")
        lines.append(f"| {_cell(r['id'])} | {_cell(r['claim'])} | {_cell(pred)} | {_cell(r['measured_text'])} | "
                     f"**{_cell(r['verdict'])}** | {_cell(r['tier'])} ({_cell(r.get('date', ''))}) |")
    lines.append("")
    for t in ("quick", "full"):
        tr = [r for r in recs if r["tier"] == t]
        if tr:
            counts = {v: sum(r["verdict"] == v for r in tr) for v in VERDICTS}
            lines.append(f"{len(tr)} claims at the {t} tier: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "  ")
    lines.append("")
    notes = [r for r in recs if r.get("note")]
    if notes:
        lines += ["## Notes", ""] + [f"- **{r['id']}** ({r['tier']}, {r['verdict']}): {r['note']}" for r in notes] + [""]
    out.write_text("\n".join(lines))
    return out
