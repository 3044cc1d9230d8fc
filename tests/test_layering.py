"""The import layers of docs/ARCHITECTURE.md hold: no module imports a higher layer's (lazy
imports inside functions included), the module import graph has no cycle, and neither has the
graph of rooms (a subpackage such as bertjax.train, or a top-level module): two rooms never
import from each other."""

import ast
import fnmatch
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def read_layers(markdown: str) -> list[tuple[int, str, list[str]]]:
    """[(level, name, patterns)] from the ```layers block, in the order written."""
    block = re.search(r"```layers\n(.*?)```", markdown, re.S)
    assert block, f"{ARCHITECTURE} has no ```layers block"
    layers = []
    for line in block.group(1).splitlines():
        if line.strip():
            level, name, *patterns = line.split()
            layers.append((int(level), name, patterns))
    return layers


def layer_of(module: str, layers) -> tuple[int, str]:
    """The first layer with a pattern matching `module` (fnmatch: `*` spans dots)."""
    for level, name, patterns in layers:
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return level, name
    raise AssertionError(f"{module} is in no layer of {ARCHITECTURE.name}: add it there")


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under `package_dir` (a package named by its dir)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported_modules(name: str, path: Path, known: dict) -> set[str]:
    """The package's modules that `name` imports anywhere in its file."""
    root = name.split(".")[0]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == root}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            source = (
                (f"{base}.{node.module}" if node.module else base)
                if node.level
                else (node.module or "")
            )
            if source.split(".")[0] != root:
                continue
            for alias in node.names:  # `from pkg import module` imports that module
                candidate = f"{source}.{alias.name}"
                found.add(candidate if candidate in known else source)
    return found - {name}


def violations(package_dir: Path, layers) -> list[str]:
    """Every import of a higher layer, and every import cycle, as one line each."""
    known = module_names(package_dir)
    graph = {name: imported_modules(name, path, known) for name, path in known.items()}
    problems = []
    for name, targets in graph.items():
        level, layer = layer_of(name, layers)
        for target in sorted(targets):
            t_level, t_layer = layer_of(target, layers)
            if t_level > level:
                problems.append(
                    f"{name} ({layer}, {level}) imports {target} ({t_layer}, {t_level})"
                )
    state = {}  # depth-first search: 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                problems.append("import cycle: " + " -> ".join(cycle))
            elif target in graph and target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return problems + room_cycles(graph)


def room_of(module: str, graph) -> str:
    """A module's room: its top-level subpackage (`pkg.train` for pkg.train.loop), or the
    module itself when it is a top-level module."""
    parts = module.split(".")
    room = ".".join(parts[:2])
    return room if any(m.startswith(room + ".") for m in graph) else module


def room_cycles(graph) -> list[str]:
    """One line per pair of rooms that import from each other (directly or around a loop)."""
    rooms: dict[str, set[str]] = {}
    for name, targets in graph.items():
        source = room_of(name, graph)
        rooms.setdefault(source, set()).update(
            room_of(t, graph) for t in targets if room_of(t, graph) != source
        )
    reach = {room: set(targets) for room, targets in rooms.items()}
    changed = True
    while changed:  # transitive closure; a few dozen rooms
        changed = False
        for room, seen in reach.items():
            more = set().union(*(reach.get(r, set()) for r in seen)) - seen
            if more:
                seen |= more
                changed = True
    return [
        f"room cycle: {a} <-> {b}"
        for a in sorted(reach)
        for b in sorted(reach[a])
        if a < b and a in reach.get(b, set())
    ]


def test_bertjax_imports_follow_the_documented_layers():
    layers = read_layers(ARCHITECTURE.read_text())
    assert violations(REPO / "bertjax", layers) == []


def test_every_module_is_listed_in_architecture_md():
    text = ARCHITECTURE.read_text()
    layout = text[text.index("## Layout") : text.index("## Layers")]
    missing = [
        str(path.relative_to(REPO / "bertjax"))
        for path in sorted((REPO / "bertjax").rglob("*.py"))
        if path.name != "__init__.py"
        and not path.parent.name == "configs"
        and f"{path.name} " not in layout.replace("\n", " \n")
    ]
    assert missing == [], f"modules missing from ARCHITECTURE.md's layout: {missing}"


def test_a_planted_upward_import_and_a_cycle_are_caught(tmp_path):
    """The checker itself: a low module importing a command, and a two-module cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "cli.py").write_text("from pkg.train import loop\n")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("def f():\n    from pkg import cli\n")  # lazy
    (pkg / "train" / "a.py").write_text("from pkg.train import b\n")
    (pkg / "train" / "b.py").write_text("import pkg.train.a\n")
    layers = read_layers(
        "```layers\n2 commands pkg.cli\n1 train pkg.train pkg.train.*\n0 base pkg pkg.errors\n```"
    )
    problems = violations(pkg, layers)
    assert "pkg.train.loop (train, 1) imports pkg.cli (commands, 2)" in problems
    assert any(
        p.startswith("import cycle: pkg.train.a -> pkg.train.b -> pkg.train.a") for p in problems
    ), problems


def _copy_of_bertjax(tmp_path):
    import shutil

    copy = tmp_path / "bertjax"
    shutil.copytree(REPO / "bertjax", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_planted_lazy_import_of_a_command_from_train_is_caught(tmp_path):
    """On a copy of the real tree: train/loop.py importing a benchmark (a command) inside a
    function is reported."""
    copy = _copy_of_bertjax(tmp_path)
    loop = copy / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\n\ndef _planted():\n    from bertjax.bench import train\n")
    problems = violations(copy, read_layers(ARCHITECTURE.read_text()))
    assert any(
        p.startswith("bertjax.train.loop (train, 2) imports bertjax.bench.train (commands, 5)")
        for p in problems
    ), problems


def test_a_planted_cycle_between_rooms_is_caught(tmp_path):
    """On a copy of the real tree: hf.py importing data.shards and data/loader.py importing hf
    make no module cycle, but the rooms bertjax.hf and bertjax.data import from each other."""
    copy = _copy_of_bertjax(tmp_path)
    for path, line in (
        (copy / "hf.py", "from bertjax.data import shards"),
        (copy / "data" / "loader.py", "from bertjax import hf"),
    ):
        path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")
    problems = violations(copy, read_layers(ARCHITECTURE.read_text()))
    assert problems == ["room cycle: bertjax.data <-> bertjax.hf"], problems
