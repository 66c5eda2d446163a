"""The architecture rules import-linter cannot express (`make lint` runs both; see README "Architecture").

1. Nothing below `lakesink.cli` imports the package root (`import lakesink`, `from lakesink import X`).
2. No `_private` name crosses a module: no `from lakesink.x import _y`, and no `obj._y` on anything
   but `self`/`cls` (in lakesink/, tests/ and benchmarks/).
3. Every name lakesink puts on the store is spelled in lakesink/layout.py only: no other module of
   the package has a string literal with `_delta_log`, `_lakesink/`, `.snappy.parquet`,
   `checkpoint.parquet`, `_last_checkpoint` or a `:020d` format.
4. Only lakesink.commit (and the delta package that implements them) calls the table's methods
   that write to the log: `TableHandle.create`, `.add_columns`, `.commit_transaction`, `.checkpoint`,
   `.merge`, `.delete_where`, `.compact`, `.vacuum`.
5. Every error lakesink raises is a LakesinkError: no `raise ValueError(...)` and the like in lakesink/.

    python tools/lint_architecture.py            # exit 1 and one line per breach, or "ok"
"""

from __future__ import annotations

import ast
import builtins
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lakesink"
STORE_NAMES = ("_delta_log", "_lakesink/", ".snappy.parquet", "checkpoint.parquet", "_last_checkpoint", ":020d")
LOG_WRITING_METHODS = frozenset({"add_columns", "commit_transaction", "checkpoint", "merge", "delete_where", "compact", "vacuum"})
# StopIteration ends an iterator; it is the protocol, not an error.
BUILTIN_ERRORS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception) and name not in ("StopIteration", "StopAsyncIteration")
)


def main() -> int:
    problems = [*package_rules(), *private_names()]
    for problem in problems:
        print(problem)
    if not problems:
        print("architecture: ok")
    return 1 if problems else 0


def python_files(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        yield from sorted(p for p in folder.rglob("*.py") if ".venv" not in p.parts)


def package_rules() -> Iterator[str]:
    for path in python_files(PACKAGE):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        below_cli = not rel.startswith("lakesink/cli/") and rel not in ("lakesink/__init__.py", "lakesink/__main__.py")
        docstrings = {id(node.body[0].value) for node in ast.walk(tree) if _has_docstring(node)}  # type: ignore[attr-defined]
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if below_cli and _imports_root(node):
                yield f"{where}: imports the package root; import the module that defines the name (rule 1)"
            if rel != "lakesink/layout.py" and isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings and any(name in node.value for name in STORE_NAMES):
                    yield f"{where}: spells a name on the store ({node.value[:50]!r}); build it in lakesink/layout.py (rule 3)"
            if rel != "lakesink/commit.py" and not rel.startswith("lakesink/delta/") and _writes_log(node):
                yield f"{where}: writes to the table's log outside lakesink.commit (rule 4)"
            if isinstance(node, ast.Raise) and _raised_name(node) in BUILTIN_ERRORS:
                yield f"{where}: raises {_raised_name(node)}; raise a LakesinkError (lakesink.errors) (rule 5)"


def private_names() -> Iterator[str]:
    for path in python_files(PACKAGE, ROOT / "tests", ROOT / "benchmarks", ROOT / "examples", ROOT / "tools"):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), rel)
        local_modules = _lakesink_module_aliases(tree)
        own = _defined_here(tree)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lakesink"):
                for alias in node.names:
                    if _is_private(alias.name):
                        yield f"{where}: imports {node.module}.{alias.name}, a private name (rule 2)"
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) or node.attr in own:
                    continue  # a module's classes may share their private parts
                if rel.startswith("lakesink/") or (isinstance(owner, ast.Name) and owner.id in local_modules):
                    yield f"{where}: reaches {ast.unparse(node)}, a private name of another object or module (rule 2)"


def _has_docstring(node: ast.AST) -> bool:
    body = getattr(node, "body", None)
    return (
        isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and bool(body)
        and isinstance(body[0], ast.Expr)  # type: ignore[index]
        and isinstance(body[0].value, ast.Constant)  # type: ignore[index]
    )


def _imports_root(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.module == "lakesink" and node.level == 0
    if isinstance(node, ast.Import):
        return any(alias.name == "lakesink" for alias in node.names)
    return False


def _writes_log(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    if node.func.attr in LOG_WRITING_METHODS:
        return True
    return node.func.attr == "create" and isinstance(node.func.value, ast.Name) and node.func.value.id == "TableHandle"


def _raised_name(node: ast.Raise) -> str | None:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return exc.id if isinstance(exc, ast.Name) else None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_here(tree: ast.Module) -> set[str]:
    """Every name a file defines: functions, classes, and attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _lakesink_module_aliases(tree: ast.Module) -> set[str]:
    """Names bound to lakesink modules in a file: `from lakesink.sources import ndjson`, `import lakesink.x as y`."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lakesink"):
            module = node.module or ""
            for alias in node.names:
                candidate = PACKAGE.parent / f"{module}.{alias.name}".replace(".", "/")
                if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                    names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lakesink"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


if __name__ == "__main__":
    sys.exit(main())
