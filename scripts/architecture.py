"""The code-shape figures of issue 11, measured on ``src/flopmatch``.

    python scripts/architecture.py            # a summary, then every finding
    python scripts/architecture.py --json

Counted:

* import cycles between flopmatch modules, counting imports inside functions too (strongly
  connected components of the module graph; ``from flopmatch.x import y`` where ``y`` is a module
  counts as an import of ``flopmatch.x.y``, and importing ``flopmatch.x`` also runs its ``__init__``);
* ``_private`` names imported from another flopmatch module;
* modules over 600 lines;
* functions over 80 lines, not counting the lines of the signature (a CLI command's option
  declarations live in its signature, and the issue exempts them).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = "flopmatch"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_files(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under ``src``."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: set[str]) -> list[tuple[str, str | None]]:
    """(imported flopmatch module, imported name or None) for every import in the file, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            target = resolve_from(module, is_package, node)
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append((submodule, None) if submodule in modules else (target, alias.name))
    return found


def with_parents(name: str, modules: set[str]) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a.b/__init__`` and ``a.b.c``."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules]


def import_graph(files: dict[str, Path]) -> tuple[dict[str, set[str]], list[dict]]:
    modules = set(files)
    graph: dict[str, set[str]] = defaultdict(set)
    private = []
    for module, path in files.items():
        for target, name in imports_of(module, path, modules):
            for dependency in with_parents(target, modules):
                if dependency != module and not module.startswith(dependency + "."):
                    graph[module].add(dependency)
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                private.append({"module": module, "imports": f"{target}.{name}"})
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def long_functions(files: dict[str, Path]) -> list[dict]:
    out = []
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body_lines = node.end_lineno - node.body[0].lineno + 1
                if body_lines > MAX_FUNCTION_LINES:
                    out.append({"function": f"{module}.{node.name}", "line": node.lineno, "lines": body_lines})
    return sorted(out, key=lambda f: -f["lines"])


def measure(src: Path) -> dict:
    files = module_files(src)
    graph, private = import_graph(files)
    sizes = {m: len(p.read_text().splitlines()) for m, p in files.items()}
    return {
        "modules": len(files),
        "import_cycles": cycles(graph),
        "private_imports": private,
        "long_modules": [{"module": m, "lines": n} for m, n in sorted(sizes.items(), key=lambda x: -x[1])
                         if n > MAX_MODULE_LINES],
        "long_functions": long_functions(files),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)
    report = measure(args.src)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['modules']} modules: {len(report['import_cycles'])} import cycles, "
          f"{len(report['private_imports'])} private imports, {len(report['long_modules'])} modules over "
          f"{MAX_MODULE_LINES} lines, {len(report['long_functions'])} functions over {MAX_FUNCTION_LINES} lines")
    for cycle in report["import_cycles"]:
        print("cycle:", " <-> ".join(cycle))
    for item in report["private_imports"]:
        print(f"private: {item['module']} imports {item['imports']}")
    for item in report["long_modules"]:
        print(f"module: {item['module']} {item['lines']} lines")
    for item in report["long_functions"]:
        print(f"function: {item['function']} (line {item['line']}) {item['lines']} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
