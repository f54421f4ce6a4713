"""The repository documents itself: no file sends the reader to a document a clone does not contain.

The methods are documented in docs/methods.md; code, help texts, notebooks, README and paper/ cite it. This test
scans every tracked text file for references to documents outside the repository: a ``papers`` folder, a
``DESIGN`` notes file, a ``shared`` folder beside or above the checkout, or a bare ``<method>.md`` spec file
(``docs/methods.md`` is the repository's own and allowed).

Not scanned: ``experiments/results/`` and ``experiments/history/`` (records of past runs, kept as written) and
the two files generated from those records, ``experiments/RESULTS.md`` and ``paper/paper.md``, which quote the
records' claim text verbatim; the claim text's source, ``experiments/test_*.py``, is scanned, so the next run
regenerates them clean.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = ("experiments/results/", "experiments/history/")
SKIP_FILES: set[str] = set()   # the generated RESULTS.md and paper/paper.md are scanned too
# character classes keep this file from matching itself
OUTSIDE = re.compile(r"paper[s]/|DESIGN[.]md|(?:\.\./|/work/)share[d]\b|(?<![\w/])(?:theory|grain|reco|arf)[.]md\b")


def tracked_files() -> list[str]:
    """Repository-relative paths of the tracked files (every file under ROOT outside .git when git is missing)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts]


def outside_references(rel_paths: list[str], root: Path = ROOT) -> list[str]:
    """'path:line: text' for every line of a text file among ``rel_paths`` that refers outside the repository."""
    hits = []
    for rel in rel_paths:
        if rel.startswith(SKIP_DIRS) or rel in SKIP_FILES:
            continue
        data = (root / rel).read_bytes() if (root / rel).is_file() else b""
        if b"\0" in data[:8192]:
            continue                                    # binary (png, npz, ...)
        text = data.decode("utf-8", errors="replace")
        for no, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{rel}:{no}: {line.strip()[:160]}")
    return hits


def test_no_file_refers_outside_the_repository():
    hits = outside_references(tracked_files())
    assert not hits, "references to documents outside the repository (cite docs/methods.md instead):\n" + \
        "\n".join(hits)


def test_the_scan_finds_each_kind_of_reference(tmp_path):
    bad = ["see paper" + "s/x.md", "the DESIGN" + ".md notes", "under ../" + "shared/", "(grain" + ".md s4)",
           "theory" + ".md section 6", "`arf" + ".md` 3.2", "reco" + ".md"]
    good = ["docs/methods.md, GRAIN §4", "paper/paper.md", "README.md", "experiments/RESULTS.md", "a paper's claim"]
    (tmp_path / "a.py").write_text("\n".join(bad + good) + "\n")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\0\0 paper" + b"s/")
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "results" / "X.json").write_text('{"claim": "paper' + 's/"}')
    hits = outside_references(["a.py", "b.png", "experiments/results/X.json"], tmp_path)
    assert [h.split(":")[1] for h in hits] == [str(i) for i in range(1, len(bad) + 1)], hits


def test_the_methods_document_has_the_sections_the_code_cites():
    """Every 'docs/methods.md, <method> §n' citation in the repository names a heading that exists."""
    doc = (ROOT / "docs" / "methods.md").read_text()
    headings = {(m.lower(), n) for m, n in re.findall(r"^### (Theory|GRAIN|RECO|ARF) §(\d+)", doc, re.M)}
    cite = re.compile(r"docs/methods\.md, (theory|GRAIN|RECO|ARF) §(\d+)")
    missing = []
    for rel in tracked_files():
        if rel.endswith((".py", ".md")) and not rel.startswith(SKIP_DIRS) and rel not in SKIP_FILES:
            for m in cite.finditer((ROOT / rel).read_text(errors="replace")):
                if (m.group(1).lower(), m.group(2)) not in headings:
                    missing.append(f"{rel}: {m.group(0)}")
    assert len(headings) == 8 + 10 + 7 + 7 and not missing, missing
