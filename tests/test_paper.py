"""paper/build.py: the write-up is built from the result files, stops on what it cannot resolve, and is up to date."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paper_build", ROOT / "paper" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def claim(cid, verdict="holds", tier="quick", **extra):
    rec = {"id": cid, "claim": f"claim {cid}", "prediction": "p", "threshold": "t", "verdict": verdict, "tier": tier,
           "measured": {"mean": 1.5, "half": 0.5, "n": 3}, "measured_text": "1.5 ± 0.5", "seeds": [0, 1, 2],
           "details": {"rows": [{"arm": "a", "acc": 0.5}, {"arm": "b", "acc": 0.75}, {"arm": "b", "acc": 0.25}],
                       "by": {"0.5": {"gain": 2.0}}}}
    return rec | extra


def world(tmp_path, recs, full=()):
    res = tmp_path / "results"
    (res / "full").mkdir(parents=True)
    for r in recs:
        (res / f"{r['id']}.json").write_text(json.dumps(r))
    for r in full:
        (res / "full" / f"{r['id']}.json").write_text(json.dumps(r))
    return res


def render(tmp_path, text, recs, full=()):
    src = tmp_path / "src.md"
    src.write_text(text)
    return build.Builder(world(tmp_path, recs, full), figdir=tmp_path / "fig", root=tmp_path).build(src)


def test_placeholders_paths_filters_and_formats(tmp_path):
    out = render(tmp_path, "{{table:X}}\n"
                           "a {{X-1:measured.mean|+.1f}} b {{X-1:details.rows.acc|mean|pct|.0f}}\n"
                           "c {{X-1:details.rows.[arm=b].acc|max}} d {{X-1:details.by.'0.5'.gain|neg}}\n"
                           "e {{X-1:verdict==holds}} f {{count:holds}}/{{count:all:X}}",
                 [claim("X-1")])
    assert "a +1.5 b 50\n" in out and "c 0.75 d -2.00" in out and "e holds f 1/1" in out
    assert "| X-1 | claim X-1 | 1.5 ± 0.5 | not yet on the calibrated protocol | **holds** | quick, 3 |" in out


def test_paper_tier_is_preferred_and_a_tier_can_be_forced(tmp_path):
    quick, full = claim("X-1", "inconclusive"), claim("X-1", "fails", tier="full", measured_text="big")
    out = render(tmp_path, "{{table:X}} {{X-1:verdict}} {{quick/X-1:verdict}}", [quick], [full])
    assert "| big | not yet on the calibrated protocol | **fails** | paper, 3 |" in out and "fails inconclusive" in out


@pytest.mark.parametrize("text, message", [
    ("{{table:X}} {{Y-9:verdict}}", "src.md:1: no result for claim 'Y-9'"),
    ("{{table:X}}\n{{X-1:verdict==fails}}", "src.md:2: the text assumes X-1:verdict = 'fails', the results say 'holds'"),
    ("{{table:X}} {{X-1:details.nope}}", "no key 'nope'"),
    ("{{table:X}} {{X-1:details.rows.[arm=z]}}", "filter [arm=z] keeps nothing"),
    ("{{table:X}} {{X-1:claim|mean}}", "filter 'mean'"),
    ("{{table:X}} {{figure:X-1}}", "has no figure"),
    ("{{X-1:verdict}}", "claims with results but in no table: X-1"),
])
def test_what_cannot_be_resolved_stops_the_build_naming_the_line(tmp_path, text, message):
    with pytest.raises(build.PaperError, match=re.escape(message)):
        render(tmp_path, text, [claim("X-1")])


def test_figures_are_copied_and_numbered(tmp_path):
    res = world(tmp_path, [claim("X-1", figure="X-1.png")])
    (res / "X-1.png").write_bytes(b"png")
    src = tmp_path / "src.md"
    src.write_text("{{overview}}\n{{table:X}}\n{{figure:X-1|a caption}}")
    (tmp_path / "fig").mkdir()
    (tmp_path / "fig" / "stale.png").write_bytes(b"old")
    out = build.Builder(res, figdir=tmp_path / "fig", root=tmp_path).build(src)
    assert not (tmp_path / "fig" / "stale.png").exists()
    assert "*Figure 2. X-1 (quick tier, holds): a caption*" in out
    assert (tmp_path / "fig" / "X-1.png").read_bytes() == b"png" and (tmp_path / "fig" / "overview.png").is_file()


def test_the_paper_builds_from_the_repository_results_and_is_up_to_date(tmp_path):
    text = build.Builder(figdir=tmp_path).build()
    assert "{{" not in text and "}}" not in text
    for cid in build.load_claims()["full"]:
        assert f"| {cid} |" in text
    committed = (ROOT / "paper" / "paper.md").read_text()
    assert committed == text, "paper/paper.md is out of date: run `python paper/build.py`"
    for fig in re.findall(r"\]\((figures/[^)]+)\)", text):
        assert (ROOT / "paper" / fig).is_file(), fig
