"""benchmarks/cells.py: a cell is computed once, saved whole, and read back instead of recomputed."""
import json

import pytest

from benchmarks.cells import CellStore, file_sha256


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


def test_a_cell_keeps_its_settings_and_is_refused_under_others(tmp_path):
    store = CellStore(tmp_path, tag="t")
    mine = {"finetune": {"steps": 2000, "lr": 2e-4}, "measure": {"num_samples": 256}}
    made = store.get("a-s0", lambda: {"fd": 1.0}, settings=mine)
    assert made["settings"] == mine and store.get("a-s0", lambda: pytest.fail("recomputed"), settings=mine) == made
    other = {"finetune": {"steps": 2000, "lr": 1e-3}, "measure": {"num_samples": 128}}
    with pytest.raises(SystemExit, match=r"a-s0.json was made with other settings \(finetune.lr, measure.num_samples\)"):
        store.get("a-s0", lambda: {"fd": 2.0}, settings=other)
    store.put("old-s0", {"fd": 3.0})  # saved before settings were recorded
    assert store.get("old-s0", lambda: pytest.fail("recomputed"), settings=mine, legacy=True)["fd"] == 3.0
    with pytest.raises(SystemExit, match="records no settings"):
        store.get("old-s0", lambda: {}, settings=mine)


def test_the_sha256_of_a_file_and_of_a_folder(tmp_path):
    import hashlib

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w.bin").write_bytes(b"abc")
    assert file_sha256(tmp_path / "d" / "w.bin") == hashlib.sha256(b"abc").hexdigest()  # sha256sum's
    before = file_sha256(tmp_path / "d")
    (tmp_path / "d" / "w.bin").write_bytes(b"abd")
    assert file_sha256(tmp_path / "d") != before


def test_the_study_takes_settings_less_cells_as_its_preset_only_under_the_preset(tmp_path):
    from benchmarks import reproduce

    base = ["--study", "converged", "--teacher", "checkpoints/tiny_shapes_16400.pt", "--work", str(tmp_path)]
    assert reproduce.Study(reproduce.parse_args(base)).legacy
    other = reproduce.Study(reproduce.parse_args(base + ["--lr", "1e-3"]))
    assert not other.legacy
    # the curve's own settings bind only the curve cells
    assert "curve" in other.settings_of("curve-random-s0") and "curve" not in other.settings_of("random-r0.3-s0")
