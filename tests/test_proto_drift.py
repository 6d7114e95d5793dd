"""The committed generated stubs are exactly what `make proto` produces from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("genproto", REPO / "tools" / "genproto.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    files = mod.generate(tmp_path)
    committed_dir = REPO / "nodecompat" / "v1"
    assert sorted(f.name for f in files) == sorted(p.name for p in committed_dir.iterdir() if p.is_file())
    drifted = [f.name for f in files if f.read_bytes() != (committed_dir / f.name).read_bytes()]
    assert not drifted, f"run `make proto`: generated code drifted for {drifted}"
