"""Build ``paper/paper.md`` from ``paper/paper.src.md`` and the result JSON files: the write-up never types a number.

    python paper/build.py                 # writes paper/paper.md and paper/figures/*.png
    python paper/build.py --check         # exit 1 when paper/paper.md is not what the results make of the source

The source is Markdown with placeholders, each resolved from a JSON file:

    {{RECO-1:measured_text}}                           a claim's field (paper tier results/full/ first, else quick)
    {{RECO-1:measured.mean|+.1f}}                      a path into the record, then filters; a format spec last
    {{RECO-1:details.base|mean|.1f}}                   filters: mean, min, max, len, pct (x100), abs, neg
    {{THY-8r:details.rows.[loss=multipos].zero-shot|mean|pct|.1f}}   [key=value] keeps the list's matching dicts
    {{GRAIN-S5:details.stats.'0.5'.sibling_gain.mean|.1f}}          quote a key that holds dots
    {{RECO-3:verdict==fails}}                          the value, asserted: the build stops if the results changed it
    {{quick/RECO-1:measured_text}}                     force a tier (quick/ or full/)
    {{benchmarks/results/knn_cpu.json:rows.[row=exact].qps|.1f}}    any JSON file of the repository
    {{table:RECO}}   {{table-full:}}                   the claims table of a prefix (short / with prediction + threshold)
    {{rows:benchmarks/results/x.json:|impl,ms:,.0f=time (ms)}}   a list of dicts as a table: key[:format][=header]
    {{figure:RECO-1|caption}}                          the claim's PNG, copied to paper/figures/, numbered
    {{overview}}                                       the verdict grid of every claim at both tiers (seaborn)
    {{count:holds}}  {{count:all:THY}}                 how many claims (of a prefix) have that verdict / results

A small path language rather than a template engine such as Jinja2: a placeholder stays short enough to read
inside a sentence, and every error names the source line that asked for it. Every claim with a result must appear in some table (nothing is left out quietly), and an unknown claim, a missing
key or a changed verdict stops the build with the source line that asked for it.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "paper" / "paper.src.md"
OUT = ROOT / "paper" / "paper.md"
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT))       # `python paper/build.py` from anywhere: the results schema is experiments.common's
from experiments.common import claim_key, load_records  # noqa: E402
VERDICTS = ("holds", "fails", "inconclusive", "untestable here")
PLACEHOLDER = re.compile(r"\{\{(.+?)\}\}")
SEGMENT = re.compile(r"'[^']*'|\[[^\]]*\]|[^.]+")


class PaperError(ValueError):
    """A placeholder that cannot be resolved; the message names the source line."""


# ----------------------------------------------------------------------------- results
def load_claims(results: Path = RESULTS) -> dict[str, dict[str, dict]]:
    """{tier: {id: record}} for tier in quick, full: every claim record (experiments.common.load_records)."""
    return {tier: {rec["id"]: rec | {"_dir": str(folder)} for rec in load_records(folder)}
            for tier, folder in (("quick", results), ("full", results / "full"))}


# ----------------------------------------------------------------------------- values
def walk(obj, path: str, where: str):
    """Follow a dotted path: dict keys, list indices, [k=v] filters; a key applied to a list maps over it."""
    for seg in SEGMENT.findall(path) if path else []:
        if seg.startswith("[") and seg.endswith("]"):
            k, _, v = seg[1:-1].partition("=")
            if not isinstance(obj, list):
                raise PaperError(f"{where}: filter {seg} needs a list, got {type(obj).__name__}")
            obj = [x for x in obj if isinstance(x, dict) and str(x.get(k)) == v]
            if not obj:
                raise PaperError(f"{where}: filter {seg} keeps nothing")
            continue
        key = seg.strip("'")
        if isinstance(obj, dict):
            if key not in obj:
                raise PaperError(f"{where}: no key {key!r}; there are {sorted(obj)[:20]}")
            obj = obj[key]
        elif isinstance(obj, list) and key.lstrip("-").isdigit():
            obj = obj[int(key)]
        elif isinstance(obj, list) and all(isinstance(x, dict) and key in x for x in obj):
            obj = [x[key] for x in obj]
        else:
            raise PaperError(f"{where}: cannot take {key!r} of a {type(obj).__name__}")
    return obj


FILTERS = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max, "len": len, "pct": lambda v: 100 * v,
           "abs": abs, "neg": lambda v: -v}


def apply_filters(value, filters: list[str], where: str) -> str:
    for f in filters:
        if f in FILTERS:
            try:
                value = FILTERS[f](value)
            except (TypeError, ValueError, ZeroDivisionError) as e:
                raise PaperError(f"{where}: filter {f!r} on {value!r}: {e}") from None
        else:
            try:
                value = format(value, f)
            except (TypeError, ValueError) as e:
                raise PaperError(f"{where}: format {f!r} on {value!r}: {e}") from None
    return value if isinstance(value, str) else fmt_number(value)


def fmt_number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return f"{int(v):,}"
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- the builder
class Builder:
    def __init__(self, results: Path = RESULTS, figdir: Path = OUT.parent / "figures", root: Path = ROOT):
        self.claims = load_claims(results)
        self.figdir, self.root = figdir, root
        self.tabled: set[str] = set()
        self.figures = 0
        self.written: set[str] = set()      # figure files of this build; build() removes the others

    def record(self, ref: str, where: str) -> dict:
        tier, _, cid = ref.rpartition("/")
        tiers = [tier] if tier else ["full", "quick"]
        if tier and tier not in self.claims:
            raise PaperError(f"{where}: unknown tier {tier!r} (quick or full)")
        for t in tiers:
            if cid in self.claims[t]:
                return self.claims[t][cid]
        raise PaperError(f"{where}: no result for claim {cid!r} in {' or '.join(tiers)} tier "
                         f"(run `pytest experiments/` or `CLIPCORE_FULL=1 pytest experiments/` first)")

    def source(self, ref: str, where: str):
        if ref.endswith(".json"):
            path = self.root / ref
            if not path.is_file():
                raise PaperError(f"{where}: no file {ref}")
            return json.loads(path.read_text())
        return self.record(ref, where)

    def value(self, body: str, where: str) -> str:
        ref, sep, rest = body.partition(":")
        if not sep:
            raise PaperError(f"{where}: {{{{{body}}}}} is neither SOURCE:PATH nor a known directive")
        path, _, expect = rest.partition("==")
        path, *filters = [p.strip() for p in path.split("|")]
        got = walk(self.source(ref.strip(), where), path, where)
        if expect and str(got) != expect.strip():
            raise PaperError(f"{where}: the text assumes {ref}:{path} = {expect.strip()!r}, the results say {got!r}; "
                             f"re-read the paragraph and update it")
        return apply_filters(got, filters, where)

    # tables and figures
    def best(self) -> dict[str, dict]:
        """Every claim's record at the tier record() prefers (the paper tier where it ran)."""
        return {cid: self.record(cid, "best") for cid in set(self.claims["quick"]) | set(self.claims["full"])}

    def table(self, prefix: str, full: bool) -> str:
        recs = sorted((r for cid, r in self.best().items() if cid.startswith(prefix)), key=lambda r: claim_key(r["id"]))
        if not recs:
            raise PaperError(f"table:{prefix}: no claim starts with {prefix!r}")
        self.tabled |= {r["id"] for r in recs}
        head = ["id", "paper claim"] + (["prediction — threshold"] if full else []) + ["measured (mean ± 95% CI)",
                                                                                       "controls", "verdict", "tier, seeds"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in recs:
            pred = [cell(r["prediction"] + (f" — {r['threshold']}" if r.get("threshold") else ""))] if full else []
            seeds = len(r.get("seeds") or []) or r.get("measured", {}).get("n", "")
            ctrl = (r.get("controls") or {}).get("text", "not yet on the calibrated protocol")
            row = [r["id"], cell(r["claim"])] + pred + [cell(r["measured_text"]), cell(ctrl), f"**{r['verdict']}**",
                                                        f"{'paper' if r['tier'] == 'full' else 'quick'}, {seeds}"]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def rows(self, body: str, where: str) -> str:
        ref, _, rest = body.partition(":")
        path, _, cols = rest.partition("|")
        data = walk(self.source(ref, where), path, where)
        specs = [re.fullmatch(r"([^:=]+)(?::([^=]*))?(?:=(.*))?", c.strip()) for c in re.split(r",(?=[A-Za-z_])", cols) if c.strip()]
        if not isinstance(data, list) or not specs or None in specs:
            raise PaperError(f"{where}: rows needs a list of dicts and |key[:format][=header],...")
        keys, fmts, heads = zip(*((m[1], m[2], m[3] or m[1]) for m in specs))
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(keys)]
        for d in data:
            lines.append("| " + " | ".join(cell(apply_filters(d.get(k, ""), [f] if f else [], where))
                                            for k, f in zip(keys, fmts)) + " |")
        return "\n".join(lines)

    def figure(self, body: str, where: str) -> str:
        ref, _, caption = body.partition("|")
        rec = self.record(ref.strip(), where)
        if not rec.get("figure"):
            raise PaperError(f"{where}: claim {rec['id']} ({rec['tier']} tier) has no figure")
        src = Path(rec["_dir"]) / rec["figure"]
        self.figdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, self.figdir / f"{rec['id']}.png")
        self.written.add(f"{rec['id']}.png")
        self.figures += 1
        cap = caption.strip() or rec["claim"]
        return (f"![{cell(rec['id'])}](figures/{rec['id']}.png)\n\n*Figure {self.figures}. {rec['id']} "
                f"({'paper' if rec['tier'] == 'full' else 'quick'} tier, {rec['verdict']}): {cap}*")

    def overview(self) -> str:
        """A grid: one row per claim, a column per tier, coloured by verdict."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        import seaborn as sns

        ids = sorted(set(self.claims["quick"]) | set(self.claims["full"]), key=claim_key)
        code = {"holds": 3, "inconclusive": 2, "untestable here": 1, "fails": 0}
        grid = np.full((len(ids), 2), np.nan)
        text = np.full((len(ids), 2), "", dtype=object)
        for j, tier in enumerate(("quick", "full")):
            for i, cid in enumerate(ids):
                if cid in self.claims[tier]:
                    grid[i, j] = code[self.claims[tier][cid]["verdict"]]
                    text[i, j] = self.claims[tier][cid]["verdict"]
        fig, ax = plt.subplots(figsize=(4.2, 0.28 * len(ids) + 1.0))
        cmap = matplotlib.colors.ListedColormap(["#d6604d", "#9ecae1", "#d9d9d9", "#4d9221"])
        sns.heatmap(grid, annot=text, fmt="", cmap=cmap, vmin=-0.5, vmax=3.5, cbar=False, linewidths=0.5,
                    linecolor="white", xticklabels=["quick tier", "paper tier"], yticklabels=ids, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.tick_params(axis="y", labelsize=7, rotation=0)
        ax.xaxis.tick_top()
        ax.set_title("verdict of every claim (blank: not run at that tier)", fontsize=8, pad=18)
        self.figdir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.figdir / "overview.png", dpi=120, bbox_inches="tight")
        self.written.add("overview.png")
        plt.close(fig)
        self.figures += 1
        return (f"![verdicts](figures/overview.png)\n\n*Figure {self.figures}. The verdict of every claim at the quick tier (3 "
                "seeds, run by `pytest`) and the paper tier (5 seeds, larger worlds).*")

    # the document
    def resolve(self, body: str, where: str) -> str:
        body = body.strip()
        if body == "overview":
            return self.overview()
        if body.startswith("count:"):
            verdict, _, prefix = body[len("count:"):].partition(":")
            if verdict not in VERDICTS + ("all",):
                raise PaperError(f"{where}: count:{verdict}: the verdict must be one of {VERDICTS} or all")
            return str(sum(cid.startswith(prefix) and verdict in ("all", r["verdict"]) for cid, r in self.best().items()))
        for name, fn in (("table-full:", lambda b: self.table(b, True)), ("table:", lambda b: self.table(b, False)),
                         ("rows:", lambda b: self.rows(b, where)), ("figure:", lambda b: self.figure(b, where))):
            if body.startswith(name):
                return fn(body[len(name):].strip())
        return self.value(body, where)

    def build(self, src: Path = SRC) -> str:
        lines = []
        for n, line in enumerate(src.read_text().splitlines(), 1):
            where = f"{src.name}:{n}"
            lines.append(PLACEHOLDER.sub(lambda m: self.resolve(m.group(1), where), line))
        missing = sorted(set(self.best()) - self.tabled, key=claim_key)
        if missing:
            raise PaperError(f"{src.name}: claims with results but in no table: {', '.join(missing)} "
                             f"(add a {{{{table:PREFIX}}}} that covers them)")
        for f in self.figdir.glob("*.png") if self.figdir.is_dir() else []:
            if f.name not in self.written:       # a figure the text no longer shows
                f.unlink()
        head = ("<!-- Generated by `python paper/build.py` from paper/paper.src.md and experiments/results/*.json "
                "(paper tier: results/full/); do not edit: edit the source and rebuild. -->\n\n")
        return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if paper.md is out of date")
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:     # --check draws its figures where they harm nothing
        try:
            text = Builder(figdir=Path(tmp) if args.check else args.out.parent / "figures").build(args.src)
        except PaperError as e:
            print(f"paper/build.py: {e}", file=sys.stderr)
            return 2
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'out of date: run python paper/build.py'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} and {args.out.parent / 'figures'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
