"""benchmarks/cells.py: a cell is computed once, saved whole, and read back instead of recomputed."""
import json

import pytest

from benchmarks.cells import CellStore


def test_cell_is_computed_once_and_reused(tmp_path):
    store = CellStore(tmp_path / "cells", tag="t")
    calls = []

    def fn():
        calls.append(1)
        return {"fd": 1.5, "rows": [1, 2]}

    first = store.get("a-s0", fn)
    again = store.get("a-s0", fn)
    assert calls == [1]
    assert first["fd"] == again["fd"] == 1.5 and again["rows"] == [1, 2]
    assert isinstance(first["seconds"], float)
    assert json.loads((tmp_path / "cells" / "a-s0.json").read_text())["fd"] == 1.5
    assert [p.name for p in (tmp_path / "cells").iterdir()] == ["a-s0.json"]  # no temporary file left behind


def test_run_false_only_reads(tmp_path):
    store = CellStore(tmp_path, tag="t")
    assert store.get("missing", lambda: pytest.fail("must not run"), run=False) is None
    assert store.load("missing") is None
    store.get("present", lambda: {"x": 1})
    assert store.get("present", lambda: pytest.fail("must not run"), run=False)["x"] == 1


def test_a_failing_cell_saves_nothing(tmp_path):
    store = CellStore(tmp_path, tag="t")

    def broken():
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        store.get("b", broken)
    assert list(tmp_path.iterdir()) == []
    assert store.get("b", lambda: {"x": 2})["x"] == 2
