"""Atomic outputs: every output file is written through common/runs.py atomic_path, so a killed
writer leaves the old file or none, never a 0-byte PNG; prune.py removes the temporaries a killed run left;
the printed "next:" commands are shell-quoted."""
from __future__ import annotations

import shlex

import pytest
import torch
from PIL import Image

import prune as prune_script
from common.images import save_grid
from common.runs import atomic_path, clean_interrupted_runs, write_json
from tests.script_helpers import run_cli, small_checkpoint


class Killed(BaseException):
    """Stands for the signal that stops a writer half-way."""


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"fd": 174})
    with pytest.raises(Killed):
        with atomic_path(path) as tmp:
            tmp.write_text('{"fd": 3')
            raise Killed
    assert path.read_text().strip().startswith("{") and '"fd": 174' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_png_killed_half_way_is_never_a_0_byte_file(tmp_path, monkeypatch):
    def half_save(self, fp, format=None, **kw):
        open(fp, "wb").close()  # what PIL had written when the kill came: nothing
        raise Killed

    monkeypatch.setattr(Image.Image, "save", half_save)
    with pytest.raises(Killed):
        save_grid(torch.zeros(4, 3, 8, 8), tmp_path / "samples_after.png")
    assert list(tmp_path.iterdir()) == []


def test_prune_script_cleans_what_a_killed_run_left(tmp_path, capsys):
    out = tmp_path / "runs"
    killed = out / "00001-m-magnitude"
    killed.mkdir(parents=True)
    (killed / ".pruned.pt.x1y2.tmp").write_bytes(b"\0" * 1000)  # an atomic write the kill interrupted
    (killed / "spec.json").write_text("{}\n")
    model = small_checkpoint(tmp_path / "m.pt")
    status, out_text, err = run_cli(prune_script, ["--model", str(model), "--method", "magnitude", "--num-samples", "2",
                                                   "--sample-steps", "2", "--out", str(out)], capsys)
    assert status == 0, err
    assert "removed" in out_text and ".pruned.pt.x1y2.tmp" in out_text
    assert sorted(p.name for p in killed.iterdir()) == ["spec.json"]
    for run in out.iterdir():  # no temporaries, no lock files, no empty outputs anywhere
        assert all(not p.name.startswith(".") and p.stat().st_size > 0 for p in run.iterdir()), list(run.iterdir())


def test_a_folder_in_use_is_not_cleaned(tmp_path):
    from common.runs import RunLock

    run = tmp_path / "00001-busy"
    run.mkdir()
    (run / ".samples_before.png.ab.tmp").write_bytes(b"\0")
    with RunLock(run, "writing it"):
        assert clean_interrupted_runs(tmp_path) == []
    assert [p.name for p in clean_interrupted_runs(tmp_path)] == [".samples_before.png.ab.tmp"]


def test_printed_next_commands_are_shell_quoted(tmp_path, capsys):
    out = tmp_path / "my runs"  # a space in every printed path
    model = small_checkpoint(tmp_path / "a model's file.pt")
    status, text, err = run_cli(prune_script, ["--model", str(model), "--method", "random", "--num-samples", "0",
                                               "--out", str(out)], capsys)
    assert status == 0, err
    run = next(out.iterdir())
    commands = [line.split("#")[0].strip() for line in text.split("next:")[1].splitlines() if line.strip()]
    parsed = [shlex.split(c) for c in commands]  # every printed command splits back into the real paths
    train_cmd, eval_cmd, replay_cmd = (next(c for c in parsed if c[1] == script)
                                       for script in ("train.py", "evaluate.py", "prune.py"))
    assert all(str(run / "pruned.pt") in c for c in parsed if "--replay" not in c)
    assert train_cmd[train_cmd.index("--model") + 1] == str(run / "pruned.pt")
    assert eval_cmd[2:4] == [str(model.relative_to(tmp_path.cwd())) if model.is_relative_to(tmp_path.cwd())
                             else eval_cmd[2], str(run / "pruned.pt")]
    assert replay_cmd == ["python", "prune.py", "--replay", str(run)]


def test_a_cache_is_built_by_one_process_while_the_others_wait(tmp_path):
    """build_lock: a second holder waits for the first (so shards encode a shared cache once), and rendered_split
    under it writes its cache file once and reads it back equal."""
    import threading
    import time

    import numpy as np

    from common.runs import build_lock
    from data.rendered import rendered_split

    order = []

    def second():
        with build_lock(tmp_path / "cache.pt"):
            order.append("second")

    with build_lock(tmp_path / "cache.pt"):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first done")
    waiter.join(5)
    assert order == ["first done", "second"]
    with pytest.raises(OSError):  # a failed first build leaves no folder behind (the caller's tree as it was)
        with build_lock(tmp_path / "new" / "deeper" / "cache.pt"):
            raise OSError("cannot decode an image")
    assert not (tmp_path / "new").exists()
    images, attrs = rendered_split("train", 3, cache_dir=tmp_path / "c")
    again, attrs2 = rendered_split("train", 3, cache_dir=tmp_path / "c")
    assert np.array_equal(images, again) and attrs == attrs2 and len(list((tmp_path / "c").glob("*.pt"))) == 1
