"""The layout's rules, read from the source: arrows only point down.

- no import circles among the package's modules;
- no library module imports the command layer (llm_summarizer.commands);
- packages stand in layers: commands > bench > export > training > tracking > evaluation > models > data >
  the bottom modules (config, errors, files, ...); a module imports only from its own layer or below;
- unsloth is imported in one place (models/unsloth_first.py);
- library modules define their classes at module level (the per-metric early stopping classes are made
  with type(), for the reason written beside it);
- only the command layer prints to standard output; a library module returns what it found (or takes a `say`
  callable, as the tune driver does) and may write progress to standard error.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "llm_summarizer"
LAYERS = [
    "commands",
    "tune",
    "scale",
    "serve",
    "bench",
    "export",
    "training",
    "tracking",
    "evaluation",
    "models",
    "data",
]  # top to bottom
SHIMS = {"__main__", "train", "evaluate", "summarize", "trainer_class"}  # thin entry points above everything


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """Our modules that `name` imports, anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("llm_summarizer")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("llm_summarizer"):
                target = node.module
            else:
                continue
            mods = modules()
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in mods else target)
    return {m for m in out if m in modules()}


def graph() -> dict[str, set[str]]:
    return {n: imports_of(n, p) - {n} for n, p in modules().items()}


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:
        return len(LAYERS) + 1  # the package itself
    if parts[1] in SHIMS and len(parts) == 2:
        return -1  # entry shims sit above the command layer
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)  # bottom modules: config, errors, files, redaction, rundir, environment, faults, hub


def test_no_import_circles():
    g = graph()
    state, stack, circles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == "open":
                circles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_arrows_point_down_and_no_library_module_imports_a_command():
    bad = []
    for n, deps in graph().items():
        if layer(n) < 0 or n.split(".")[-1] == "__main__":
            continue
        for m in deps:
            if layer(m) < 0 or ".commands" in m and ".commands" not in n:
                bad.append(f"{n} -> {m} (a library module imports the command layer)")
            elif layer(m) < layer(n):
                bad.append(f"{n} -> {m} (up from {layer(n)} to {layer(m)})")
    assert not bad, "\n".join(sorted(bad))


def test_unsloth_is_imported_in_one_place():
    found = []
    for n, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name == "unsloth" for a in node.names):
                found.append(n)
    assert found == ["llm_summarizer.models.unsloth_first"], found


def test_library_classes_are_module_level():
    """Classes inside functions hide from readers and from pickling; the one exception has its reason
    written beside it (transformers keys callback state by class name)."""
    found = []
    for n, p in modules().items():
        for fn in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{n}.{fn.name}: class {c.name}" for c in ast.walk(fn) if isinstance(c, ast.ClassDef)]
    assert not found, found


def test_library_modules_import_our_modules_at_the_top():
    """Only the command layer (after validation) and the documented optional extras import inside functions."""
    late = []
    for n, p in modules().items():
        if ".commands" in n or layer(n) < 0:
            continue
        for fn in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.level:
                        late.append(f"{n}.{fn.name}: from {'.' * node.level}{node.module or ''}")
    assert not late, late


def _import_groups(fn) -> list[list[ast.stmt]]:
    """The runs of consecutive import statements in each statement list of a function (nested blocks included)."""
    groups = []
    for node in ast.walk(fn):
        for name in ("body", "orelse", "finalbody", "handlers"):
            stmts = getattr(node, name, None)
            if not isinstance(stmts, list):
                continue
            run = []
            for s in stmts:
                if isinstance(s, (ast.Import, ast.ImportFrom)):
                    run.append(s)
                    continue
                if run:
                    groups.append(run)
                run = []
            if run:
                groups.append(run)
    return groups


def test_every_import_inside_a_function_says_why():
    """An import inside a function is a decision (an optional extra, a module only one command needs, a start-up
    cost deferred until the arguments are checked): its reason is written beside it, on one of the group's lines
    or in the comment line right above the group of consecutive imports."""
    silent = []
    for n, p in modules().items():
        lines = p.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        seen = set()
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for group in _import_groups(fn):
                first, last = group[0].lineno, group[-1].end_lineno
                if first in seen:
                    continue
                seen.add(first)
                above = lines[first - 2].strip() if first > 1 else ""
                if above.startswith("#") or any("#" in lines[i - 1] for i in range(first, last + 1)):
                    continue
                silent.append(f"{p.relative_to(PKG.parent)}:{first}: {lines[first - 1].strip()}")
    assert not silent, "in-function imports without a reason beside them:\n" + "\n".join(silent)


# The class API's training entry prints the end-of-run summary, as the original script did: it is a command for
# the users of that class, in the training package because the class is.
PRINTS_ALLOWED = {"llm_summarizer.training.api"}


def test_only_the_command_layer_prints_to_standard_output():
    printing = []
    for n, p in modules().items():
        if n.startswith("llm_summarizer.commands") or n in PRINTS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
                and not any(k.arg == "file" for k in node.keywords)
            ):
                printing.append(f"{p.relative_to(PKG.parent)}:{node.lineno}")
    assert not printing, "library modules printing to standard output (return it, or take a `say`):\n" + "\n".join(
        printing
    )
