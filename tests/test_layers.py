"""Imports run one way: every module of star_deploy imports only its own layer and the layers below.

Every import counts, at module level or inside a function (lazy imports included), so a layer
cannot be crossed by moving an import into a function body. The runtime never imports the
exporter: an artefact folder is described and read by ``star_deploy.artifacts``, written by
``star_deploy.export``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "star_deploy"

LAYERS: list[set[str]] = [
    # what every layer raises and reports
    {"errors", "version"},
    # plain definitions: configuration, the graph contract, dtypes, tables, sampler, tokenizer, argument checks
    {"core"},
    # files on disk without loss: atomic writes, output sets, images, records, interrupts
    {"files"},
    # the PyTorch reference model, and the shipped demo's files
    {"model", "demo"},
    # a weight release: found on disk (no torch), loaded (torch), its shapes, random weights, Hub folders
    {"release"},
    # an artefact folder: manifest, schema, digests, graph checks
    {"artifacts"},
    # TensorRT engines: build, sidecars, profiles, buffer plans
    {"engines"},
    # one class per runtime behind the Backend protocol
    {"backends"},
    # the scale loop, written once against that protocol; what from_pretrained loads; memory estimates
    {"runtime"},
    # comparing pipelines; writing artefact folders
    {"evaluation", "export"},
    # the Python API
    {"api"},
    # front ends: the HTTP server, the browser site, bulk generation from prompt files
    {"serve", "web", "batch"},
    # every benchmark: backends, the server, the browser
    {"bench"},
    {"commands"},
    {"cli", "__main__", "star_deploy"},
]
"""Lowest first. A module may import its own layer and those below it, never one above."""

EXPORT_USERS = {"export", "bench", "api", "web", "commands"}
"""The only parts that import the exporter (the API for ``save_pretrained``, the site writer for its int8/int4
weights): the runtime reads artefact folders, it does not write them."""

FORBIDDEN = {"export": {"engines", "backends", "runtime", "evaluation"}}
"""Imports the layer table alone would allow but that would tie the exporter to a runtime."""


def layer_of(unit: str) -> int:
    found = [i for i, units in enumerate(LAYERS) if unit in units]
    assert found, f"star_deploy.{unit} has no layer: add it to LAYERS in tests/test_layers.py"
    return found[0]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path``, relative ones resolved, ``from pkg import mod`` as the mod."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.append((node.lineno, candidate if candidate in known else base))
    return list(dict.fromkeys(out))


def unit(module: str, top: str) -> str | None:
    """``star_deploy.backends.ort_backend`` -> ``backends``; the package itself -> ``star_deploy``."""
    if module != top and not module.startswith(top + "."):
        return None
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else top


def violations(root: Path) -> list[str]:
    """Every import in the package under ``root`` that breaks the layer table, one line each."""
    top = root.name
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    found = []
    for path in files:
        source = unit(module_name(path, root), top)
        for line, target_module in imported(path, root, known):
            if target_module == "tools" or target_module.startswith("tools."):
                found.append(f"{path.relative_to(root.parent)}:{line}: imports {target_module}, outside the package")
                continue
            target = unit(target_module, top)
            if target is None or target == source:
                continue
            where = f"{path.relative_to(root.parent)}:{line}: {top}.{source} imports {target_module}"
            if layer_of(target) > layer_of(source):
                found.append(f"{where}, a higher layer")
            elif target == "export" and source not in EXPORT_USERS:
                found.append(f"{where}: the runtime must not import the exporter")
            elif target in FORBIDDEN.get(source, ()):
                found.append(f"{where}, which the exporter must not depend on")
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every module of the package under ``root`` -> the package's modules it imports (lazy imports included)."""
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path, root)
        graph[name] = set()
        for _, target in imported(path, root, known):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more nodes that reach each other (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def circles(root: Path) -> list[str]:
    """Every import circle between modules, and between units (top-level modules and folders), one line each."""
    top = root.name
    graph = import_graph(root)
    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = unit(module, top)
        units.setdefault(source, set()).update(t for t in map(lambda m: unit(m, top), targets) if t != source)
    return [f"modules import each other: {' <-> '.join(g)}" for g in strongly_connected(graph)] + [
        f"units import each other: {' <-> '.join(f'{top}.{u}' for u in g)}" for g in strongly_connected(units)
    ]


def test_imports_follow_the_layers():
    assert violations(PACKAGE) == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__", "data"}
    for part in sorted(parts):
        layer_of(part)


def test_no_import_circles():
    assert circles(PACKAGE) == []


MAX_ROOT_MODULES = 12
"""The package root holds the entry points and what every layer shares; the rest lives in folders."""


def test_the_package_root_stays_small():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at star_deploy/ (at most {MAX_ROOT_MODULES}): {root}"


HEAVY = ("torch", "transformers", "safetensors", "onnx", "onnxscript", "tensorrt")


def test_finding_a_release_needs_no_torch():
    """``release.finder`` and everything it imports, at any depth, import no heavy library (lazily or not)."""
    graph = import_graph(PACKAGE)
    known = set(graph)
    seen, todo = set(), ["star_deploy.release.finder"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    for module in sorted(seen):
        path = PACKAGE.parent / (module.replace(".", "/") + ("/__init__.py" if module.count(".") == 0 else ".py"))
        if not path.is_file():
            path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
        heavy = [m for _, m in imported(path, PACKAGE, known) if m.split(".")[0] in HEAVY]
        assert not heavy, f"{module} imports {heavy}"


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "star_deploy" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "star_deploy"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"core/config.py": "from ..runtime.pipeline import ScaleLoop\n"},
            "star_deploy.core imports star_deploy.runtime.pipeline",
        ),
        (
            {"backends/__init__.py": "", "backends/x.py": "def f():\n    from ..export import manifest\n"},
            "star_deploy.backends imports star_deploy.export.manifest",
        ),
        (
            {"runtime/pipeline.py": "import star_deploy.evaluation.parity\n"},
            "star_deploy.runtime imports star_deploy.evaluation.parity",
        ),
        (
            {"evaluation/parity.py": "from ..export.manifest import load_manifest\n"},
            "the runtime must not import the exporter",
        ),
        (
            {"export/__init__.py": "from ..runtime import pipeline\n"},
            "star_deploy.export imports star_deploy.runtime.pipeline",
        ),
        ({"release/weights.py": "from tools.demo_training import train\n"}, "imports tools.demo_training"),
    ],
    ids=[
        "upward",
        "lazy-import-of-the-exporter",
        "absolute",
        "runtime-on-exporter",
        "exporter-on-runtime",
        "outside-the-package",
    ],
)
def test_the_checker_finds_each_kind_of_violation(tmp_path, files, expected):
    root = write_package(tmp_path, {**SKELETON, **files})
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found


SKELETON = {
    f"{part}.py": ""
    for part in (
        "__init__",
        "core/__init__",
        "core/config",
        "release/__init__",
        "release/weights",
        "runtime/__init__",
        "runtime/pipeline",
        "evaluation/__init__",
        "evaluation/parity",
        "export/__init__",
        "export/manifest",
    )
}
"""A package of empty modules in the real layout, for the checkers' own tests."""


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "runtime/loading.py": "from . import pipeline\n",
                "runtime/pipeline.py": "def f():\n    from .loading import X\n",
            },
            ["modules import each other: star_deploy.runtime.loading <-> star_deploy.runtime.pipeline"],
        ),
        (
            {
                "export/manifest.py": "from ..evaluation import parity\n",
                "evaluation/parity.py": "from ..export import x\n",
            },
            ["units import each other: star_deploy.evaluation <-> star_deploy.export"],
        ),
    ],
    ids=["modules-in-a-unit", "units-in-a-layer"],
)
def test_the_checker_finds_import_circles(tmp_path, files, expected):
    assert circles(write_package(tmp_path, {**SKELETON, "export/x.py": "", **files})) == expected


def test_the_runtime_package_ships_no_training_code():
    """The demo keeps its weights (safetensors) and graphs; its training lives in tools/demo_training."""
    demo = PACKAGE / "demo"
    assert sorted(p.name for p in demo.glob("*.py")) == ["__init__.py"]
    assert sorted(p.name for p in (demo / "weights").iterdir() if p.is_file() and p.suffix != ".json") == [
        "star.safetensors",
        "vae.safetensors",
    ]
    assert (ROOT / "tools" / "demo_training" / "train.py").is_file()


REGISTRY = PACKAGE / "backends" / "registry.py"
"""The one module that knows the backends by name."""


def backend_name_comparisons(root: Path, names: set[str]) -> list[str]:
    """Every comparison (``==``, ``!=``, ``in``) of a value with a backend's name, outside the registry."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            constants = [n for o in operands for n in ([o] if isinstance(o, ast.Constant) else ast.walk(o))]
            named = {c.value for c in constants if isinstance(c, ast.Constant) and c.value in names}
            if named:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: compares with {', '.join(sorted(named))}")
    return found


def test_only_the_registry_compares_backend_names():
    """A backend's identity lives in its ``BackendSpec``: elsewhere code reads the spec, never its name."""
    from star_deploy.backends.registry import BACKENDS

    assert backend_name_comparisons(PACKAGE, set(BACKENDS)) == []


def test_the_comparison_finder_finds_names(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text('def f(b):\n    return b == "torch" or b in ("x", "tensorrt")\n')
    (package / "b.py").write_text('def g(b):\n    return b.name != "x"\n')
    found = backend_name_comparisons(package, {"torch", "tensorrt"})
    assert found == ["pkg/a.py:2: compares with torch", "pkg/a.py:2: compares with tensorrt"]
