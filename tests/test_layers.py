"""The floors of the `cityloop` namespace, read statically from every module's source.

* ground: ``cityloop`` itself, ``cityloop.core.*``, ``cityloop.scenes.*`` (the simulator),
  ``cityloop.scenarios.*`` (the scenario units the simulator draws and the rules run): stdlib,
  third-party (never Prefect) and other ground modules only.
* wings: every other subpackage (governance, labeling, models, bento, edge, analysis, loop, and any
  future one): ground and wings; never Prefect, ``cityloop.flows``, ``cityloop.cli``, ``cityloop.stack``.
* flows: ``cityloop.flows.*``: ground, wings, Prefect; never ``cityloop.cli`` or ``cityloop.stack``.
* top: ``cityloop.cli.*``, ``cityloop.stack``: nothing outside top imports them.
* ``cityloop.bento.*`` and ``cityloop.edge.*`` load without torch or Lightning (the runtime view is
  tests/bento/test_build.py::test_bento_and_edge_import_without_torch_or_prefect; this is the static one,
  which also names the chain of imports that would pull torch in).

Every import counts, wherever it is written: module level, inside functions (lazy), under
``if TYPE_CHECKING:``, relative ones (resolved), ``import a.b``, ``from a import b`` (also as the
submodule ``a.b`` when that is a module) and ``importlib.import_module("literal")``. Modules are found
through the import system (``importlib.util.find_spec`` + ``pkgutil.iter_modules``), so the
package-dir mapping of pyproject.toml (cityloop.flows <- flows/, ...) is followed, not guessed.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import cityloop

REPO = Path(__file__).resolve().parents[1]
PREFECT = ("prefect",)  # and every prefect_* integration (prefect_dask, ...)
TORCH = ("torch", "torchvision", "lightning", "pytorch_lightning", "lightning_fabric")
TORCH_FREE = ("cityloop.bento", "cityloop.edge")


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer(module: str) -> str:
    """ground | wing | flows | top for a cityloop module (every unnamed subpackage is a wing)."""
    if module == "cityloop" or any(under(module, f"cityloop.{g}") for g in ("core", "scenes", "scenarios")):
        return "ground"
    if under(module, "cityloop.flows"):
        return "flows"
    if under(module, "cityloop.cli") or under(module, "cityloop.stack"):
        return "top"
    return "wing"


def is_prefect(target: str) -> bool:
    top = target.split(".")[0]
    return top in PREFECT or top.startswith("prefect_")


def is_torch(target: str) -> bool:
    return target.split(".")[0] in TORCH


# ---------------------------------------------------------------- finding the modules


def declared_packages() -> list[str]:
    """The packages pyproject.toml tells setuptools to install."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["tool"]["setuptools"]["packages"])


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_pkg: bool


def _walk(package: str, locations: list[str]) -> Iterator[Module]:
    for info in pkgutil.iter_modules(locations):
        name = f"{package}.{info.name}"
        spec = info.module_finder.find_spec(name, None)
        if spec is None:
            continue
        if spec.origin and spec.origin.endswith(".py"):
            yield Module(name, Path(spec.origin), info.ispkg)
        if info.ispkg and spec.submodule_search_locations:
            yield from _walk(name, list(spec.submodule_search_locations))


@cache
def modules() -> dict[str, Module]:
    """Every module of the installed namespace, by dotted name (no subpackage is imported)."""
    found = {"cityloop": Module("cityloop", Path(cityloop.__file__), True)}
    roots = {p for p in declared_packages() if p.count(".") == 1}
    roots |= {f"cityloop.{m.name}" for m in pkgutil.iter_modules(cityloop.__path__)}
    for root in sorted(roots):
        spec = importlib.util.find_spec(root)
        assert spec is not None, f"{root} is declared in pyproject.toml but cannot be found"
        if spec.origin and spec.origin.endswith(".py"):
            found[root] = Module(root, Path(spec.origin), spec.submodule_search_locations is not None)
        if spec.submodule_search_locations:
            found.update((m.name, m) for m in _walk(root, list(spec.submodule_search_locations)))
    return found


# ---------------------------------------------------------------- reading the imports


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    lazy: bool  # inside a function body
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        where = ", ".join(w for w, on in (("lazy", self.lazy), ("TYPE_CHECKING", self.type_only)) if on)
        return f"{self.importer} → {self.target}  (line {self.line}{', ' + where if where else ''})"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(mod: Module, level: int, name: str | None) -> str:
    package = mod.name if mod.is_pkg else mod.name.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{mod.name}: relative import beyond the top-level package")
    base = ".".join(parts[: len(parts) - (level - 1)])
    return f"{base}.{name}" if name else base


def _targets(node: ast.AST, mod: Module, known: dict[str, Module]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(mod, node.level, node.module) if node.level else node.module or ""
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        return [base, *subs]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        func = node.func
        fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if fname in ("import_module", "__import__"):
            return [node.args[0].value]
    return []


@cache
def imports_of(name: str) -> tuple[Import, ...]:
    known = modules()
    mod = known[name]
    tree = ast.parse(mod.path.read_text(), filename=str(mod.path))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        found.extend(Import(name, t, node.lineno, lazy, type_only) for t in _targets(node, mod, known))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            lazy = True
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            visit(node.test, lazy, type_only)
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, lazy, type_only)

    visit(tree, False, False)
    return tuple(found)


def all_imports() -> Iterator[Import]:
    for name in sorted(modules()):
        yield from imports_of(name)


def report(title: str, bad: list[Import]) -> str:
    lines = sorted({str(i) for i in bad})
    return f"{title}: {len(lines)} offending import(s) (module → imported module)\n  " + "\n  ".join(lines)


# ---------------------------------------------------------------- the module list itself


def test_modules_are_found_through_the_package_dir_mapping():
    found = modules()
    for name in ("cityloop", "cityloop.core.settings", "cityloop.scenes.frames", "cityloop.governance.gate",
                 "cityloop.flows.training", "cityloop.models.components.detector", "cityloop.labeling.server",
                 "cityloop.bento.service", "cityloop.edge.node", "cityloop.cli", "cityloop.stack"):
        assert name in found, f"{name} not found among {sorted(found)}"
    missing = [p for p in declared_packages() if p not in found]
    assert not missing, f"declared in pyproject.toml but not found as packages: {missing}"
    assert found["cityloop.flows.training"].path == REPO / "flows" / "training.py"
    assert found["cityloop.models.components.detector"].path == REPO / "models" / "components" / "detector.py"


def test_every_discovered_package_is_declared():
    """A package on disk that pyproject.toml does not list would be missing from the wheel."""
    undeclared = sorted(n for n, m in modules().items() if m.is_pkg and n not in declared_packages())
    assert not undeclared, f"packages not listed in [tool.setuptools] packages: {undeclared}"


def test_import_reader_resolves_relative_and_from_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import gate\nfrom ..core import settings\nfrom cityloop import stack\n"
                   "import prefect.flows\nif TYPE_CHECKING:\n    import torch\n"
                   "def f():\n    import importlib\n    importlib.import_module('cityloop.cli')\n")
    mod = Module("cityloop.governance.fake", src, False)
    known = {**modules(), mod.name: mod}
    tree = ast.parse(src.read_text())
    targets = [t for node in ast.walk(tree) for t in _targets(node, mod, known)]
    for want in ("cityloop.governance", "cityloop.governance.gate", "cityloop.core", "cityloop.core.settings",
                 "cityloop", "cityloop.stack", "prefect.flows", "torch", "importlib", "cityloop.cli"):
        assert want in targets, (want, targets)


# ---------------------------------------------------------------- the floors


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    importer: Callable[[str], bool]
    forbidden: Callable[[Import], bool]


def _cityloop_layer(target: str) -> str | None:
    return layer(target) if under(target, "cityloop") else None


RULES = [
    Rule("ground", "ground (cityloop, cityloop.core, cityloop.scenes, cityloop.scenarios) may import only "
         "stdlib/third-party (not Prefect) and ground",
         lambda m: layer(m) == "ground",
         lambda i: _cityloop_layer(i.target) not in (None, "ground") or is_prefect(i.target)),
    Rule("wings", "wings may import ground and wings only: never cityloop.flows, cityloop.cli, cityloop.stack",
         lambda m: layer(m) == "wing",
         lambda i: _cityloop_layer(i.target) in ("flows", "top")),
    Rule("wings-prefect", "wings never import prefect (or prefect_* integrations)",
         lambda m: layer(m) == "wing",
         lambda i: is_prefect(i.target)),
    Rule("flows", "cityloop.flows never imports cityloop.cli or cityloop.stack",
         lambda m: layer(m) == "flows",
         lambda i: _cityloop_layer(i.target) == "top"),
    Rule("top", "nothing outside top imports cityloop.cli or cityloop.stack",
         lambda m: layer(m) != "top",
         lambda i: _cityloop_layer(i.target) == "top"),
]


def test_rules_flag_what_they_should():
    """The rules themselves, on made-up imports (a future wing such as cityloop.scheduling included)."""
    def broken(importer: str, target: str) -> set[str]:
        imp = Import(importer, target, 1, False, False)
        return {r.id for r in RULES if r.importer(importer) and r.forbidden(imp)}

    assert broken("cityloop", "cityloop.governance") == {"ground"}
    assert broken("cityloop.core.steps", "prefect") == {"ground"}
    assert broken("cityloop.scenes.frames", "cityloop.stack") == {"ground", "top"}
    assert broken("cityloop.scheduling.jobs", "cityloop.flows.training") == {"wings"}
    assert broken("cityloop.loop.runner", "prefect_dask") == {"wings-prefect"}
    assert broken("cityloop.bento.build", "cityloop.cli.output") == {"wings", "top"}
    assert broken("cityloop.flows.loop", "cityloop.stack") == {"flows", "top"}
    for importer, target in [("cityloop.core.steps", "numpy"), ("cityloop.scenes.video", "cityloop.core.geometry"),
                             ("cityloop.edge.node", "cityloop.models.runtime"), ("cityloop.flows.steps", "prefect"),
                             ("cityloop.flows.loop", "cityloop.loop.runner"), ("cityloop.stack", "cityloop.flows"),
                             ("cityloop.cli", "cityloop.stack"), ("cityloop.governance.gate", "cityloop")]:
        assert broken(importer, target) == set(), (importer, target)


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_floor(rule: Rule):
    bad = [i for i in all_imports() if rule.importer(i.importer) and rule.forbidden(i)]
    assert not bad, report(rule.title, bad)


def test_bento_and_edge_have_no_module_level_torch():
    bad = [i for i in all_imports() if any(under(i.importer, p) for p in TORCH_FREE)
           and is_torch(i.target) and not i.lazy and not i.type_only]
    assert not bad, report("cityloop.bento / cityloop.edge import torch or Lightning at module level", bad)


def _load_closure(start: str) -> dict[str, tuple[str | None, Import | None]]:
    """Modules executed when `start` is imported (module-level imports only), each with the import that
    first reached it; third-party names are kept as their top-level package."""
    known = modules()
    seen: dict[str, tuple[str | None, Import | None]] = {start: (None, None)}
    queue = [start]
    while queue:
        cur = queue.pop(0)
        reached: list[tuple[str, Import | None]] = []
        parts = cur.split(".")  # importing a.b.c runs a and a.b first
        reached += [(".".join(parts[:k]), None) for k in range(1, len(parts))]
        for imp in imports_of(cur):
            if imp.lazy or imp.type_only:
                continue
            if under(imp.target, "cityloop"):
                tparts = imp.target.split(".")
                reached += [(".".join(tparts[:k]), imp) for k in range(1, len(tparts) + 1)]
            else:
                reached.append((imp.target.split(".")[0], imp))
        for mod, imp in reached:
            if mod in seen:
                continue
            seen[mod] = (cur, imp)
            if mod in known:
                queue.append(mod)
    return seen


def _chain(seen: dict[str, tuple[str | None, Import | None]], end: str) -> str:
    steps = [end]
    while (parent := seen[steps[-1]][0]) is not None:
        steps.append(parent)
    return " → ".join(reversed(steps))


def test_bento_and_edge_load_without_torch():
    """What importing each bento/edge module executes at import time (module-level imports, followed
    through every cityloop module) never includes torch or Lightning."""
    chains = []
    for name in sorted(m for m in modules() if any(under(m, p) for p in TORCH_FREE)):
        seen = _load_closure(name)
        chains += [_chain(seen, t) for t in seen if t not in modules() and is_torch(t)]
    assert not chains, "importing cityloop.bento / cityloop.edge pulls in torch or Lightning:\n  " + \
        "\n  ".join(chains)
