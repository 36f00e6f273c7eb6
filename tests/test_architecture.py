"""The house's rules, read from the source (ARCHITECTURE.md): loccheck's imports, every one of them
(also those inside functions), point down the pipeline's stages and never form a cycle. No torch:
the source is parsed, not imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "loccheck"

# Bottom to top. A module may import its own stage and the stages below it, never one above.
STAGES = (
    ("ground", {"loccheck", "errors", "registry", "locations", "files", "userfiles", "schema", "cache",
                "progress", "render", "numerics"}),
    ("data", {"data"}),
    ("models", {"models"}),
    ("members", {"heuristics", "edits", "metrics", "ablations"}),
    ("stats", {"stats"}),
    ("claim", {"claim"}),
    ("report", {"report"}),
    ("run", {"run"}),
    ("studies", {"studies"}),
    ("front ends", {"cli", "plugin", "options", "testing", "__main__"}),
)
# Within the members, only an edit method may use metrics (ITI picks alpha by the verdict's metric).
MEMBER_IMPORTS = {("edits", "metrics")}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The loccheck module an imported name lives in (a name imported from a package is the package
    unless it is one of its modules)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Every loccheck module `module` imports, at its top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        found |= {m for m in map(_resolve, (n for n in names if n.split(".")[0] == "loccheck")) if m}
    return found - {module}


GRAPH = {m: imports_of(m) for m in MODULES}


def stage_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "loccheck"
    return next(i for i, (_, names) in enumerate(STAGES) if top in names)


def _registry_edge(a: str, b: str) -> bool:
    """A registry package imports its members to register them, and each member imports the
    package for its base class: the one cycle allowed, inside one folder."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_every_module_has_a_stage():
    assert all(stage_of(m) is not None for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_stages(module):
    up = sorted(m for m in GRAPH[module] if stage_of(m) > stage_of(module))
    assert not up, f"{module} ({STAGES[stage_of(module)][0]}) imports a later stage: {up}"
    if STAGES[stage_of(module)][0] == "members":
        mine = module.split(".")[1]
        across = sorted(m for m in GRAPH[module] if stage_of(m) == stage_of(module)
                        and m.split(".")[1] != mine and (mine, m.split(".")[1]) not in MEMBER_IMPORTS)
        assert not across, f"{module} imports another kind of member: {across}"


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), registry edges left out."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            if _registry_edge(v, w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles() == []


def test_the_rules_can_fail():
    # the checks above would see a cycle and an upward import if there were one
    GRAPH["loccheck.errors"].add("loccheck.run.verify")
    try:
        assert cycles() and stage_of("loccheck.run.verify") > stage_of("loccheck.errors")
    finally:
        GRAPH["loccheck.errors"].discard("loccheck.run.verify")


def test_the_statistics_and_the_claim_never_import_torch():
    # the fast tier and a paper's CI read claims and re-derive statistics without torch
    heavy = {"torch", "transformers", "peft"}
    for module, path in MODULES.items():
        if module.startswith(("loccheck.stats", "loccheck.claim", "loccheck.render", "loccheck.schema")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            used |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert not used & heavy, f"{module} imports {sorted(used & heavy)}"
