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
    # plain definitions: configs, the graph contract, dtypes, tables, sampling, files and records
    {
        "version",
        "cpu_isa",
        "errors",
        "config",
        "dtypes",
        "graphs",
        "tables",
        "sampling",
        "records",
        "atomic",
        "extras",
        "signals",
        "outputs",
        "images",
        "tokenizer",
        "arguments",
    },
    # the PyTorch reference model, and the shipped demo's files
    {"model", "demo"},
    # what lies on disk: a weight release and how it loads, an artefact folder and how it reads
    {"release", "weights", "weight_shapes", "artifacts", "memory", "random_weights", "hub"},
    # TensorRT engines: build, sidecars, profiles, buffer plans
    {"engines"},
    # one class per runtime behind the Backend protocol
    {"backends"},
    # the scale loop, written once against that protocol
    {"pipeline"},
    # comparing pipelines; writing artefact folders
    {"evaluation", "export"},
    # the Python API (and how it loads) and the benchmark
    {"api", "loading", "bench"},
    {"serve", "web"},
    {"commands"},
    {"cli", "__main__", "star_deploy"},
]
"""Lowest first. A module may import its own layer and those below it, never one above."""

EXPORT_USERS = {"export", "bench", "api", "commands"}
"""The only parts that import the exporter (the API for ``save_pretrained``): the runtime reads artefact folders,
it does not write them."""

FORBIDDEN = {"export": {"engines", "backends", "pipeline", "evaluation"}}
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


def test_imports_follow_the_layers():
    assert violations(PACKAGE) == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__", "data"}
    for part in sorted(parts):
        layer_of(part)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "star_deploy" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "star_deploy"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"config.py": "from .pipeline import ScaleLoop\n"}, "star_deploy.config imports star_deploy.pipeline"),
        (
            {"backends/__init__.py": "", "backends/x.py": "def f():\n    from ..export import manifest\n"},
            "star_deploy.backends imports star_deploy.export.manifest",
        ),
        ({"pipeline.py": "import star_deploy.evaluation\n"}, "star_deploy.pipeline imports star_deploy.evaluation"),
        (
            {"evaluation.py": "from .export.manifest import load_manifest\n"},
            "the runtime must not import the exporter",
        ),
        ({"export/__init__.py": "from .. import pipeline\n"}, "star_deploy.export imports star_deploy.pipeline"),
        ({"weights.py": "from tools.demo_training import train\n"}, "imports tools.demo_training"),
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
    root = write_package(tmp_path, {"__init__.py": "", "pipeline.py": "", "evaluation.py": "", **files})
    (root / "export").mkdir(exist_ok=True)
    (root / "export" / "__init__.py").touch()
    (root / "export" / "manifest.py").touch()
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found


def test_the_runtime_package_ships_no_training_code():
    """The demo keeps its weights (safetensors) and graphs; its training lives in tools/demo_training."""
    demo = PACKAGE / "demo"
    assert sorted(p.name for p in demo.glob("*.py")) == ["__init__.py"]
    assert sorted(p.name for p in (demo / "weights").iterdir() if p.is_file() and p.suffix != ".json") == [
        "star.safetensors",
        "vae.safetensors",
    ]
    assert (ROOT / "tools" / "demo_training" / "train.py").is_file()
