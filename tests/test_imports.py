"""clipcore's modules import each other without a cycle: every ``import`` / ``from ... import`` statement, at module
level or inside a function, relative or absolute, is an edge of the module graph, and that graph is acyclic."""
from __future__ import annotations

import ast
from pathlib import Path

import clipcore

ROOT = Path(clipcore.__file__).resolve().parent


def module_name(path: Path) -> str:
    """``clipcore/methods/grain/method.py`` -> ``clipcore.methods.grain``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The clipcore modules that ``path`` (module ``name``) imports anywhere in its body. ``from P import x`` names
    the submodule ``P.x`` when there is one, else the module ``P``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    # "import clipcore.a.b" reaches clipcore.a.b; keep only clipcore's own modules, never the module itself
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search, three colours)."""
    colour = dict.fromkeys(graph, 0)       # 0 unseen, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour[child] == 1:
                    return path[path.index(child):] + [child]
                if colour[child] == 0:
                    colour[child] = 1
                    stack.append((child, iter(sorted(graph[child]))))
                    path.append(child)
                    break
            else:
                colour[node] = 2
                stack.pop()
                path.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_finder_sees_function_level_and_relative_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    pkg = tmp_path / "clipcore" / "sub"
    pkg.mkdir(parents=True)
    src = pkg / "m.py"
    src.write_text("import os\nfrom . import n\ndef f():\n    from ..x import y\n    import clipcore.z\n")
    known = {"clipcore.sub.n", "clipcore.x", "clipcore.z", "clipcore.sub.m"}
    global ROOT
    old, ROOT = ROOT, tmp_path / "clipcore"
    try:
        assert imports_of(module_name(src), src, known) == {"clipcore.sub.n", "clipcore.x", "clipcore.z"}
    finally:
        ROOT = old


def test_clipcore_imports_have_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["clipcore.train"], "the walk found too few modules or imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_model_preset_is_known_without_importing_a_method():
    """Presets are registered where models live (clipcore.models), not as a side effect of importing a method:
    a fresh interpreter that imports only clipcore.models knows GRAIN's presets."""
    import subprocess
    import sys
    code = ("import sys; from clipcore.models import PRESETS, get_config; get_config('grain-tiny'); "
            "assert not any(m.startswith('clipcore.methods') for m in sys.modules), sorted(sys.modules); "
            "print(sorted(PRESETS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "grain-tiny" in out.stdout and "grain-xs" in out.stdout and "tiny" in out.stdout
