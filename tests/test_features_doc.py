"""docs/features.md must be exactly what tools/gen_features_doc.py generates from the probes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from nodecompat.probes.registry import load_probes

REPO = Path(__file__).resolve().parent.parent


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_features_doc", REPO / "tools" / "gen_features_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_doc_is_current():
    probes, errors = load_probes()
    assert errors == []
    committed = (REPO / "docs" / "features.md").read_text()
    assert committed == _tool().render(probes), "docs/features.md is stale: run tools/gen_features_doc.py"


def test_doc_lists_every_declared_feature_and_marks_additions():
    probes, _ = load_probes()
    doc = (REPO / "docs" / "features.md").read_text()
    for p in probes:
        assert f"## `{p.name}` probe" in doc
        for f in p.features:
            assert f"| `{f.name}` |" in doc
    assert "| `pci.device` | instance | `address` — PCI address (domain:bus:device.function) |" in doc
    assert doc.count("| `pci.device` |") == 12  # 11 attribute rows + the summary row


def test_check_mode_detects_drift(tmp_path, capsys):
    tool = _tool()
    out = tmp_path / "features.md"
    assert tool.main(["-o", str(out)]) == 0
    assert tool.main(["--check", "-o", str(out)]) == 0
    out.write_text(out.read_text().replace("| `kernel.version` |", "| `kernel.versions` |", 1))
    assert tool.main(["--check", "-o", str(out)]) == 1
    assert "is out of date" in capsys.readouterr().err
