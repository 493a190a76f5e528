"""The package boundary: what a wheel ships, that it runs from any folder, and how the code is laid out."""

import ast
import os
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "flaxner").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages"


@pytest.mark.slow
def test_wheel_ships_configs_and_finds_them_from_any_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "whl"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "whl").glob("flaxner-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = ("import flaxner.config as c; p = c.resolve_config_path('quickstart'); "
            "print(p); print(c.load_config(p).name)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert Path(out[0]).is_relative_to(tmp_path / "site")
    assert out[1] == "quickstart"


def _bench_modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted((ROOT / "bench").glob("*.py"))
            if p.stem != "__init__"}


def test_bench_is_a_package_of_modules_without_import_cycles():
    """bench/ is run as `python -m bench.<name>`: modules import each other as `bench.x` (never through a sys.path
    edit), and their imports, those inside functions too, form no cycle."""
    assert (ROOT / "bench" / "__init__.py").is_file()
    trees = _bench_modules()
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        deps = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
                assert node.level == 0, f"bench/{name}.py: a relative import"
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                if isinstance(node, ast.Attribute) and node.attr == "path":
                    assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), \
                        f"bench/{name}.py:{node.lineno}: sys.path"
                continue
            for m in mods:
                assert m.split(".")[0] not in trees, f"bench/{name}.py imports {m}: write bench.{m}"
                if m.startswith("bench."):
                    deps.add(m.split(".")[1])
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, "import cycle: " + " -> ".join((*path, name))
        if name not in done:
            for dep in graph.get(name, ()):
                visit(dep, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_bench_uses_no_private_names():
    """bench/ consumes flaxner through public names: no `from flaxner... import _x`, and no `obj._x` on anything
    but its own `self` (or a subclass' `super()`)."""
    for name, tree in _bench_modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flaxner"):
                assert not any(a.name.startswith("_") for a in node.names), f"bench/{name}.py:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                own = (isinstance(owner, ast.Name) and owner.id == "self") or (
                    isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super")
                assert own, f"bench/{name}.py:{node.lineno}: .{node.attr}"


# The rooms and the one direction imports point: a module imports its own room and the rooms below it only
# (`cli -> training | tagging -> models -> data -> the bottom`); training and tagging never import each other.
BOTTOM = {"__init__", "config", "configfile", "rundir", "runtime", "hostmem", "precompile", "interrupts"}
RANK = {"bottom": 0, "data": 1, "models": 2, "training": 3, "tagging": 3, "cli": 4}
# Modules over the size a newcomer reads in one go; each may only shrink (the house issue's debt, named here).
MAX_LINES = 350
OVER = {"flaxner/tagging/reading.py": 356}


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "flaxner":
        return ""
    if len(parts) == 1 or parts[1] in BOTTOM:
        return "bottom"
    return parts[1] if parts[1] in RANK else "?"


def _flaxner_modules() -> dict[str, Path]:
    out = {}
    for p in (ROOT / "flaxner").rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


def test_four_rooms_and_nothing_else_at_the_top():
    top = {p.stem for p in (ROOT / "flaxner").glob("*.py")}
    assert top == BOTTOM | {"cli"}, f"a module at the top that belongs in a room: {sorted(top - BOTTOM - {'cli'})}"
    rooms = {p.name for p in (ROOT / "flaxner").iterdir() if (p / "__init__.py").is_file()}
    assert rooms == {"data", "models", "training", "tagging"}


def test_imports_point_one_way():
    bad = []
    for name, path in _flaxner_modules().items():
        here = _room(name)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                targets = [t for t in targets if t in _flaxner_modules()] or [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                there = _room(t)
                if not there or there == here:
                    continue
                if RANK[there] >= RANK[here]:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} ({here}) imports {t} ({there})")
    assert not bad, "\n".join(bad)


def test_tagging_processes_never_imports_jax():
    """--processes' parent only splits, starts children and joins: it must start in a blink, without JAX."""
    code = "import sys, flaxner.tagging.processes; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('jax', 'jaxlib', 'flax', 'transformers', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_modules_stay_short():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "flaxner").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    grown = {f: n for f, n in long.items() if n > OVER.get(f, MAX_LINES)}
    assert not grown, f"split these modules (at most {MAX_LINES} lines): {grown}"


def _package_trees() -> dict[str, ast.Module]:
    paths = sorted((ROOT / "flaxner").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(), str(p)) for p in paths}


def test_each_choice_list_is_written_once():
    """A choice list is a Literal alias in flaxner/config.py, written nowhere else in the package: its values never
    appear together as a tuple, list or set display outside that declaration, and no argparse `choices=` is a
    display (they read the alias: `choices(Alias)`)."""
    from flaxner import config

    aliases = {name: frozenset(typing.get_args(v)) for name, v in vars(config).items()
               if typing.get_origin(v) is typing.Literal}
    assert {"Aggregation", "Words", "Context", "Scheme", "Batching", "LossNorm", "EvalTest", "ModelDtype",
            "TagDtype"} <= set(aliases)
    where: dict[str, list[str]] = {name: [] for name in aliases}
    for path, tree in _package_trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "choices":
                assert not isinstance(node.value, (ast.Tuple, ast.List, ast.Set)), \
                    f"{path}:{node.value.lineno}: choices= written out; declare a Literal alias in flaxner/config.py"
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and \
                    all(isinstance(e, ast.Constant) for e in node.elts):
                values = frozenset(e.value for e in node.elts)
                where.update({name: [*where[name], f"{path}:{node.lineno}"] for name, s in aliases.items()
                              if s == values})
    twice = {name: places for name, places in where.items()
             if len(places) > 1 or any(not p.startswith("flaxner/config.py:") for p in places)}
    assert twice == {}, "read these from the alias in flaxner/config.py (typing.get_args / config.choices)"
