"""The golden fixtures are the files their provenance README describes, byte for byte."""

from __future__ import annotations

import hashlib
import re

from conftest import GOLDEN

ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| (?P<size>\d+) \| `(?P<sha>[0-9a-f]{64})` \|$", re.MULTILINE)


def test_every_golden_file_matches_its_recorded_checksum():
    recorded = {m["name"]: (int(m["size"]), m["sha"]) for m in ROW.finditer((GOLDEN / "README.md").read_text())}
    present = {p.relative_to(GOLDEN).as_posix(): p for p in GOLDEN.rglob("*") if p.is_file()}
    assert set(recorded) == set(present) - {"README.md"}, "the README's checksum table and the folder differ"
    for name, (size, sha) in recorded.items():
        data = present[name].read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha), f"{name} changed"
