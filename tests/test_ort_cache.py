"""The optimized-graph cache trusts no entry: whatever sits under an entry's name, a load rebuilds it, never hangs."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from star_deploy.artifacts.manifest import Manifest, load_manifest
from star_deploy.artifacts.onnx_io import append_metadata, read_header
from star_deploy.backends import ort_cache
from star_deploy.backends.ort_backend import OrtBackend
from star_deploy.core.config import SamplingConfig
from star_deploy.core.tokenizer import PromptTokenizer
from star_deploy.runtime.pipeline import ScaleLoop

GRAPH = "transformer_step"
LOAD_SECONDS = 120
"""A load that takes longer hangs (a FIFO opened for reading blocks until a writer comes)."""


def entry(folder: Path, graph: str = GRAPH) -> Path:
    return next((folder / ort_cache.CACHE_DIR).glob(f"{graph}.*.onnx"))


def key_of(manifest: Manifest, graph: str = GRAPH) -> str:
    return ort_cache.cache_key(onnxruntime, manifest, graph, "cpu")


def digest_name(path: Path, key: str) -> Path:
    """``path`` moved to the entry name its contents give under ``key``."""
    target = path.with_name(f"{key}.{ort_cache._digest(path)}.onnx")
    path.rename(target)
    return target


def fifo(folder: Path, manifest: Manifest) -> None:
    path = entry(folder)
    path.unlink()
    os.mkfifo(path)


def directory(folder: Path, manifest: Manifest) -> None:
    path = entry(folder)
    path.unlink()
    path.mkdir()
    (path / "x").write_text("not a graph")


def other_graph(folder: Path, manifest: Manifest) -> None:
    """vq_decoder's optimized graph under the step's key, with a digest that matches its contents."""
    entry(folder).unlink()
    copy = folder / ort_cache.CACHE_DIR / "copy"
    shutil.copy(entry(folder, "vq_decoder"), copy)
    digest_name(copy, key_of(manifest))


def other_source(folder: Path, manifest: Manifest) -> None:
    """The step's optimized graph saying it was made from another source (a later metadata entry wins)."""
    path = entry(folder)
    append_metadata(path, {ort_cache.SOURCE_KEY: "0" * 64})
    digest_name(path, key_of(manifest))


def symlink(folder: Path, manifest: Manifest) -> None:
    path = entry(folder)
    target = folder / "elsewhere.onnx"
    path.rename(target)
    path.symlink_to(target)


def damaged(folder: Path, manifest: Manifest) -> None:
    path = entry(folder)
    path.write_bytes(path.read_bytes()[:100])


# (id, change to a folder whose cache is complete, what the warning says)
CASES = [
    ("fifo", fifo, "not a regular file"),
    ("directory", directory, "not a regular file"),
    ("other-graph", other_graph, "optimized from another graph"),
    ("other-source", other_source, "optimized from another graph"),
    ("symlink", symlink, "not a regular file"),
    ("damaged", damaged, "do not match its digest"),
]


def tokens(manifest: Manifest) -> np.ndarray:
    loop = ScaleLoop(OrtBackend(manifest), PromptTokenizer(manifest.tokenizer_dir))
    return loop.generate(["a red car."], SamplingConfig(top_k=50), [1]).tokens


def within(seconds: float, work):
    """``work()``'s result, failing the test if it does not return in time (a daemon thread cannot hold pytest)."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hung for {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture(scope="module")
def cached(artifacts_fp32, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A copy of the fp32 export with a complete cache, and its tokens for one prompt."""
    folder = tmp_path_factory.mktemp("cached") / "art"
    shutil.copytree(artifacts_fp32, folder, ignore=shutil.ignore_patterns(ort_cache.CACHE_DIR))
    return folder, tokens(load_manifest(folder))


@pytest.mark.parametrize(("change", "warning"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_cache_entry_is_rebuilt(change, warning, cached, tmp_path, caplog):
    folder = tmp_path / "art"
    shutil.copytree(cached[0], folder, symlinks=True)
    manifest = load_manifest(folder)
    change(folder, manifest)
    caplog.set_level(logging.WARNING)
    assert np.array_equal(within(LOAD_SECONDS, lambda: tokens(manifest)), cached[1])
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(GRAPH in m and warning in m for m in messages), messages
    usable = [p for p in (folder / ort_cache.CACHE_DIR).glob(f"{key_of(manifest)}.*.onnx") if p.is_file()]
    assert [p for p in usable if ort_cache.entry_problem(p, key_of(manifest), manifest, GRAPH) is None], usable
    caplog.clear()
    within(LOAD_SECONDS, lambda: OrtBackend(manifest))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_an_entry_names_the_graph_it_was_made_from(cached):
    header = read_header(entry(cached[0]))
    manifest = load_manifest(cached[0])
    assert header.metadata[ort_cache.SOURCE_KEY] == manifest.graph_hashes[GRAPH]
    assert header.metadata[ort_cache.GRAPH_KEY] == GRAPH


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """The XDG spec: a relative path in XDG_CACHE_HOME is invalid; the default ~/.cache is used instead."""
    from star_deploy.demo import DEMO_GRAPHS

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert ort_cache.cache_folder(DEMO_GRAPHS) == tmp_path / "home" / ".cache" / "star-deploy" / ort_cache.CACHE_DIR
    assert not (tmp_path / "relative").exists()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "abs"))
    assert ort_cache.cache_folder(DEMO_GRAPHS) == tmp_path / "abs" / "star-deploy" / ort_cache.CACHE_DIR
