"""Shared machinery of ``pytest experiments/``: tiers, seeds, the calibrated verdict protocol, result JSON,
figures and the generated ``experiments/RESULTS.md`` (conventions: experiments/README.md).

Every claim test (protocol 2) does the same things, each decided by ONE rule on the SAME seeds:

    RULE = dict(lower=0.0)                                        # pre-registered, committed before the results
    d = paired_ci(arm_a, arm_b)                                   # arms sharing seeds are compared paired
    rule = verdict_from_ci(d, **RULE)                             # the claim's arms
    ctrl = controls(verdict_from_ci(paired_ci(oracle, arm_b), **RULE),     # positive control: must be 'holds'
                    verdict_from_ci(paired_ci(arm_b_other_seeds, arm_b), **RULE))  # negative: neither
    checks = [headroom("zero-shot error", err_b, floor=0, ceiling=1 - 1 / K, margin=0.02)]
    rec = save_result("THY-3", ..., measured=d, verdict=final_verdict(rule, ctrl, checks),
                      controls=ctrl, checks=checks, changed="why it may differ from protocol 1")
    conclude(rec)                      # passes only on "holds"; else xfail with the number

Four verdicts: holds / fails / inconclusive / untestable here ("untestable here" when a headroom check fails or a
control misses: the world cannot decide the claim). Bounds go through :func:`bound_verdict`; composite rules of
k intervals use CIs at :func:`family_conf`; regimes are chosen on :func:`pilot_seeds` (>= 1000).

The JSON schema (one file per claim, ``results/<ID>.json``; the paper tier's in ``results/full/``) is what
RESULTS.md, the notebooks and paper/ read:
{id, paper, claim, prediction, threshold, measured: {mean, lo, hi, n, values}, measured_text, verdict, tier,
 seeds, note, details, figure, wall_s, date, protocol, controls, checks, changed, preregistered}. The table takes
every JSON file in ``results/`` that has the keys id, claim, prediction, measured_text, verdict and tier.
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
VERDICTS = ("holds", "fails", "inconclusive", "untestable here")
PILOT_SEED0 = 1000       # regimes and thresholds are chosen on seeds >= this, never on the verdict seeds


def tier(quick, full):
    """The quick-tier value, or the full-tier one under CLIPCORE_FULL=1."""
    return full if FULL else quick


def seeds(quick: int = 3, full: int = 5) -> list[int]:
    """The verdict seeds of a claim: 0, 1, ... (always < PILOT_SEED0)."""
    return list(range(tier(quick, full)))


def pilot_seeds(n: int = 3) -> list[int]:
    """Seeds for choosing a regime or a threshold before the verdict runs: PILOT_SEED0, PILOT_SEED0 + 1, ...
    They never decide a verdict (save_result refuses them)."""
    return list(range(PILOT_SEED0, PILOT_SEED0 + n))


# ----------------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], conf: float = 0.95) -> dict:
    """Mean and two-sided t-interval over seeds: {mean, lo, hi, half, n, values, conf}. n = 1 gives an infinite
    half-width."""
    from scipy.stats import t as student_t
    v = np.asarray([float(x) for x in values], dtype=float)
    n = len(v)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(v.mean())
    half = float(student_t.ppf(0.5 + conf / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "n": n, "values": v.tolist(),
            "conf": conf}


def paired_ci(a: Sequence[float], b: Sequence[float], conf: float = 0.95) -> dict:
    """CI of the per-seed differences a_i - b_i: the comparison for two arms run on the same seeds (the seed's
    world and data are shared, so its variation cancels; an unpaired comparison would throw that away)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci: {len(a)} values against {len(b)}: arms must share their seeds")
    return mean_ci([float(x) - float(y) for x, y in zip(a, b)], conf)


def family_conf(k: int, conf: float = 0.95) -> float:
    """Per-interval confidence for a composite rule of k intervals (Bonferroni): with each CI at 1 - (1-conf)/k,
    the chance that any of the k misleads is at most 1 - conf. Composite rules state k in their threshold."""
    return 1 - (1 - conf) / max(int(k), 1)


def fmt_ci(ci: dict, digits: int = 3) -> str:
    """'0.123 ± 0.010 (n=3)'."""
    return f"{ci['mean']:.{digits}g} ± {ci['half']:.2g} (n={ci['n']})"


def degenerate(ci: dict) -> bool:
    """True when every seed gave the same value (a 0-width interval): the seeds carry no information about
    spread, which on these worlds means a floor or ceiling, never evidence."""
    return not (ci["half"] > 0) or math.isnan(ci["half"])


def verdict_from_ci(ci: dict, lower: float | None = None, upper: float | None = None) -> str:
    """'holds' when the whole CI lies strictly inside (lower, upper); 'fails' when it lies wholly outside;
    else 'inconclusive'. A degenerate interval (all seeds equal) sitting exactly on a bound -- e.g. a 0 ± 0
    difference of two arms at a floor against "> 0" -- is 'inconclusive', never 'fails': it is the floor
    speaking, not the claim. A degenerate interval strictly inside or strictly outside is decided as any other."""
    lo, hi = ci["lo"], ci["hi"]
    lower = -math.inf if lower is None else lower
    upper = math.inf if upper is None else upper
    if lo > lower and hi < upper:
        return "holds"
    if degenerate(ci) and ci["mean"] in (lower, upper):
        return "inconclusive"
    if hi <= lower or lo >= upper:
        return "fails"
    return "inconclusive"


def all_of(*verdicts: str) -> str:
    """Composite rule 'every part holds': holds if all hold, fails if any fails, else inconclusive ('untestable
    here' if any part is). Use CIs at family_conf(k) for its k parts, and say k in the threshold."""
    if any(v == UNTESTABLE for v in verdicts):
        return UNTESTABLE
    return "holds" if all(v == "holds" for v in verdicts) else "fails" if "fails" in verdicts else "inconclusive"


def bound_verdict(measured: Sequence[Sequence[float]], envelope: Sequence[Sequence[float]],
                  conf: float = 0.95) -> tuple[str, list[dict]]:
    """A bound (measured <= envelope) tested as a bound: at every point j (an n, a shift, ...) the paired
    per-seed slack envelope - measured. 'holds' when every slack CI is > 0, 'fails' when some slack CI is wholly
    < 0 (the bound is broken), else 'inconclusive'. The k points form one composite rule: CIs at family_conf(k).
    Returns (verdict, [slack CI per point])."""
    k = len(measured)
    cis = [paired_ci(e, m, family_conf(k, conf)) for m, e in zip(measured, envelope)]
    vs = [verdict_from_ci(ci, lower=0.0) for ci in cis]
    return all_of(*vs), cis


# ----------------------------------------------------------------------------- the protocol: headroom, controls
UNTESTABLE = "untestable here"


def headroom(name: str, values: Sequence[float], *, floor: float | None = None, ceiling: float | None = None,
             margin: float) -> dict:
    """The check that the world can decide: the mean of ``values`` (a metric the claim is read on, e.g. an error
    rate) lies more than the pre-registered ``margin`` away from its ``floor`` and ``ceiling``. A metric at a floor
    or ceiling cannot show a difference, so a claim read on it is 'untestable here' (never 'fails')."""
    m = float(np.mean(values))
    low = floor is not None and m - floor <= margin
    high = ceiling is not None and ceiling - m <= margin
    where = "at its floor" if low else "at its ceiling" if high else "off floor and ceiling"
    bounds = ", ".join(x for x in (f"floor {floor:g}" if floor is not None else "",
                                   f"ceiling {ceiling:g}" if ceiling is not None else "") if x)
    return {"name": name, "mean": m, "ok": not (low or high),
            "text": f"{name} {m:.3g} {where} ({bounds}; margin {margin:g})"}


def controls(pos: str, neg: str, *, pos_detail: str = "", neg_detail: str = "",
             neg_clean: tuple[str, ...] = ("inconclusive",)) -> dict:
    """The two controls of a claim test, each decided by the claim's own rule on the same seeds:
    - ``pos``: the rule's verdict on an arm where the effect is present by construction (ground truth, an oracle,
      or the effect planted at the size the threshold needs): 'detected' iff it is 'holds';
    - ``neg``: the rule's verdict on a null (an arm against a copy of itself with other seeds, or a variant
      without the mechanism): 'clean' iff it is one of ``neg_clean`` (by default: neither holds nor fails. A rule
      whose threshold lies away from 0, e.g. 'gain >= 5 pt', may pass neg_clean=('inconclusive', 'fails'), since
      such a rule rightly fails a null; say so in the threshold)."""
    detected, clean = pos == "holds", neg in neg_clean
    detail = "; ".join(x for x in (f"pos {pos}: {pos_detail}" if pos_detail else "",
                                   f"neg {neg}: {neg_detail}" if neg_detail else "") if x)
    text = f"pos: {'detected' if detected else 'missed'}; neg: {'clean' if clean else 'flagged'}" + (f" ({detail})" if detail else "")
    return {"pos": pos, "neg": neg, "pos_detected": detected, "neg_clean": clean, "text": text}


def final_verdict(rule: str, ctrl: dict, checks: Sequence[dict] = ()) -> str:
    """The verdict a claim reports: the rule's verdict on the claim's arms, unless the test's own checks say the
    world cannot decide it -- a headroom check failed, the positive control missed, or the negative control
    flagged (the rule sees effects in a null) -- then 'untestable here', whatever the point estimate."""
    if not all(c["ok"] for c in checks) or not ctrl["pos_detected"] or not ctrl["neg_clean"]:
        return UNTESTABLE
    return rule


# ----------------------------------------------------------------------------- results
def figure_path(claim_id: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{claim_id}.png"


def savefig(fig, claim_id: str) -> str:
    path = figure_path(claim_id)
    fig.savefig(path, dpi=110, bbox_inches="tight")      # "tight" keeps suptitles and outside legends
    plt.close(fig)
    return path.name


PROTOCOL = 2              # 1: three verdicts, no controls (history/protocol1.json); 2: the calibrated protocol
HISTORY = HERE / "history"


def preregistration(test_file: str | Path) -> dict:
    """Where git can check the pre-registration: the last commit of the test file that holds the thresholds, and
    whether the file had uncommitted changes when the result was made (then it was not pre-registered)."""
    import subprocess
    f = Path(test_file).resolve()
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=f.parent, capture_output=True, text=True, timeout=20)  # noqa: E731
        commit = run("log", "-1", "--format=%h", "--", f.name).stdout.strip()
        dirty = run("status", "--porcelain", "--", f.name).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"file": f.name, "commit": None, "clean": None}
    return {"file": f.name, "commit": commit or None, "clean": bool(commit) and not dirty}


def save_result(claim_id: str, *, claim: str, prediction: str, threshold: str, measured: dict, verdict: str,
                measured_text: str | None = None, details: dict | None = None, figure: str | None = None,
                seeds: Sequence[int] = (), wall_s: float | None = None, paper: str = "theory",
                note: str = "", controls: dict | None = None, checks: Sequence[dict] = (),
                changed: str = "") -> dict:
    """Write results/<claim_id>.json and return the record.

    ``controls`` (from :func:`controls`) and ``checks`` (from :func:`headroom`) are what make a record a
    protocol-2 record: the verdict must then be :func:`final_verdict` of them (checked here). ``changed``: why the
    verdict may differ from the first protocol's (listed under 'What changed'). ``note``: a short reading of the
    result, never a change of the verdict. Verdict seeds must be < PILOT_SEED0 (pilot seeds choose, never decide).
    """
    import inspect
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if any(int(s) >= PILOT_SEED0 for s in seeds):
        raise ValueError(f"{claim_id}: seeds >= {PILOT_SEED0} are pilot seeds; a verdict may not use them")
    if controls is not None and verdict == "holds" and final_verdict("holds", controls, checks) != "holds":
        raise ValueError(f"{claim_id}: 'holds' although a control or headroom check says untestable")
    caller = Path(inspect.stack()[1].filename)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rec = {"id": claim_id, "paper": paper, "claim": claim, "prediction": prediction, "threshold": threshold,
           "measured": measured, "measured_text": measured_text or fmt_ci(measured), "verdict": verdict,
           "tier": TIER, "seeds": list(seeds), "note": note, "details": details or {}, "figure": figure,
           "wall_s": None if wall_s is None else round(wall_s, 1), "date": time.strftime("%Y-%m-%d"),
           "protocol": PROTOCOL if controls is not None else 1,
           "controls": controls, "checks": list(checks), "changed": changed,
           "preregistered": preregistration(caller)}
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
PAPER_ORDER = ("THY", "RECO", "GRAIN", "ARF")     # the order claims are listed in (RESULTS.md, paper/)
RECORD_KEYS = ("id", "claim", "prediction", "measured_text", "verdict", "tier")   # what save_result writes


def claim_key(claim_id: str):
    """Sort key of a claim id: its paper's place in :data:`PAPER_ORDER`, then natural order (RECO-2 < RECO-10)."""
    prefix = claim_id.split("-")[0]
    order = PAPER_ORDER.index(prefix) if prefix in PAPER_ORDER else len(PAPER_ORDER)
    return order, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", claim_id)]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def load_records(results: Path) -> list[dict]:
    """The claim records of one results folder (the JSON files :func:`save_result` wrote, with every key of
    :data:`RECORD_KEYS`), by file name; other JSON there (run caches such as GRAIN-runs.json) is skipped. The one
    reader of the results schema: RESULTS.md and paper/build.py both use it."""
    recs = []
    for f in sorted(results.glob("*.json")) if results.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and set(RECORD_KEYS) <= rec.keys():
            recs.append(rec)
    return recs


def controls_cell(rec: dict) -> str:
    """The `controls` cell: exactly 'pos: detected|missed; neg: clean|flagged' plus detail, and the headroom
    checks; a record made before the calibrated protocol says so."""
    c = rec.get("controls")
    if not c:
        return "not yet on the calibrated protocol"
    checks = "; ".join(k["text"] for k in rec.get("checks") or [])
    return c["text"] + (f"; headroom: {checks}" if checks else "")


def _undecided(rec: dict) -> str:
    """An inconclusive row says that its tier's seeds could not decide it (it does not pose as a verdict)."""
    if rec["verdict"] != "inconclusive":
        return ""
    n = (rec.get("measured") or {}).get("n") or len(rec.get("seeds") or [])
    return f" (not decided: the interval straddles the threshold with {n} seeds at the {rec['tier']} tier)"


def what_changed(recs: list[dict], history: Path = HISTORY / "protocol1.json") -> list[str]:
    """'## What changed': every claim (and tier) whose protocol-2 verdict differs from its protocol-1 verdict,
    old -> new and why; the old verdicts stay in history/protocol1.json."""
    if not history.is_file():
        return []
    old = json.loads(history.read_text())["verdicts"]
    lines = []
    for r in recs:
        prev = old.get(r["id"], {}).get(r["tier"])
        if r.get("protocol", 1) < 2:
            continue
        if prev is None:
            lines.append(f"- **{r['id']}** ({r['tier']}): new claim → **{r['verdict']}**. {r.get('changed', '')}".rstrip())
        elif prev["verdict"] != r["verdict"]:
            lines.append(f"- **{r['id']}** ({r['tier']}): {prev['verdict']} → **{r['verdict']}** (was: {prev['measured']}). "
                         f"{r.get('changed', '')}".rstrip())
    return lines


def write_results_md(results: Path = QUICK_RESULTS, out: Path = RESULTS_MD) -> Path | None:
    """Rebuild the claims table from every result JSON in ``results`` (quick tier) and ``results/full`` (paper
    tier: its row follows the quick row of the same claim); None when there is none."""
    recs = load_records(results) + load_records(results / "full")
    if not recs:
        return None
    recs.sort(key=lambda r: (claim_key(r["id"]), r["tier"] != "quick"))
    lines = ["# Results of `pytest experiments/`", "",
             "Generated by `experiments/conftest.py` at the end of every `pytest experiments/` session from "
             "`experiments/results/*.json` (quick tier: `pytest experiments/`) and `experiments/results/full/*.json` "
             "(paper tier: `CLIPCORE_FULL=1 pytest experiments/...`); do not edit by hand. Measured values are the "
             "mean ± the half-width of the 95% t-interval over seeds; each row's figure is `results/<id>.png` "
             "(`results/full/<id>.png`).", "",
             "| id | paper claim | prediction (pre-registered) | measured (mean ± 95% CI, n seeds) | controls | verdict | tier |",
             "|---|---|---|---|---|---|---|"]
    for r in recs:
        pred = r["prediction"] + (f" — threshold: {r['threshold']}" if r.get("threshold") else "")
        pre = r.get("preregistered") or {}
        mark = "" if pre.get("clean", True) is not False else "; NOT pre-registered (test file uncommitted)"
        lines.append(f"| {_cell(r['id'])} | {_cell(r['claim'])} | {_cell(pred)} | {_cell(r['measured_text'])} | "
                     f"{_cell(controls_cell(r))} | **{_cell(r['verdict'])}**{_undecided(r)} | {_cell(r['tier'])} "
                     f"({_cell(r.get('date', ''))}{', thresholds at ' + pre['commit'] if pre.get('commit') else ''}{mark}) |")
    lines.append("")
    for t in ("quick", "full"):
        tr = [r for r in recs if r["tier"] == t]
        if tr:
            counts = {v: sum(r["verdict"] == v for r in tr) for v in VERDICTS}
            lines.append(f"{len(tr)} claims at the {t} tier: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + "  ")
    lines.append("")
    changed = what_changed(recs)
    lines += ["## What changed", "",
              "Verdicts that differ from the first protocol's (three verdicts, no controls; kept in "
              "`experiments/history/protocol1.json`), old → new and why:", ""] + (changed or ["- none yet"]) + [""]
    notes = [r for r in recs if r.get("note")]
    if notes:
        lines += ["## Notes", ""] + [f"- **{r['id']}** ({r['tier']}, {r['verdict']}): {r['note']}" for r in notes] + [""]
    out.write_text("\n".join(lines))
    return out
