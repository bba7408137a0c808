"""benchmarks/reproduce_parallel.py on the tiny study of tests/test_reproduce.py: the shards share the cells, a
restored cell is kept as it is and not recomputed, the finished cells come back in one archive, and the
deadline stops what is still running."""
from __future__ import annotations

import json
import tarfile

import pytest

from benchmarks import reproduce_parallel

STUDY = ["--seeds", "0", "--methods", "random", "scratch", "--steps", "1", "--num-samples", "4",
         "--sample-steps", "1", "--heldout-images", "8", "--curve-methods", "--batch-size", "2",
         "--max-timesteps", "2", "--sweep-ratios", "--only", "main"]


@pytest.mark.slow
def test_two_shards_share_the_cells_keep_a_restored_one_and_pack_them(tmp_path):
    restored = tmp_path / "earlier"
    restored.mkdir()
    teacher_cell = {"method": "teacher", "params": 1113955, "macs_paper": 259091968, "heldout_loss": 0.0085,
                    "fd_shapes": 12.5, "kid_shapes": 9.0, "ssim_to_teacher": 1.0, "seconds": 1.0,
                    "note": "finished in an earlier session"}
    work, archive = tmp_path / "work", tmp_path / "out" / "cells.tar.gz"
    # made elsewhere with this study's settings (a cell without them, off the preset, would be refused)
    from benchmarks.reproduce import parse_args
    from benchmarks.reproduce_config import cell_settings
    settings = cell_settings(parse_args([*STUDY, "--work", str(work)]))
    teacher_cell["settings"] = {k: v for k, v in settings.items() if k != "curve"}
    (restored / "teacher.json").write_text(json.dumps(teacher_cell))
    status = reproduce_parallel.main(["--processes", "2", "--deadline", "300", "--stop-after", "200",
                                      "--restore", str(restored), "--pack", str(archive), "--",
                                      *STUDY, "--work", str(work), "--results", str(tmp_path / "results")])
    assert status == 0
    cells = {p.name for p in (work / "cells").glob("*.json")}
    assert {"teacher.json", "random-r0.3-s0.json", "scratch-r0.3-s0.json"} <= cells
    assert json.loads((work / "cells" / "teacher.json").read_text()) == teacher_cell  # not recomputed
    logs = [(work / "parallel" / f"shard_{i}.log").read_text() for i in (0, 1)]
    assert all("[reproduce]" in log for log in logs)  # both shards ran cells
    with tarfile.open(archive) as tar:
        assert {m.name for m in tar.getmembers()} == {f"cells/{c}" for c in cells}


def test_the_deadline_stops_running_shards_and_bad_flags_are_refused(tmp_path):
    work = tmp_path / "work"
    status = reproduce_parallel.main(["--processes", "1", "--deadline", "2", "--stop-after", "1", "--",
                                      *STUDY, "--steps", "500", "--work", str(work),
                                      "--results", str(tmp_path / "results")])
    assert status == 1 and not list((work / "cells").glob("random-*.json"))
    with pytest.raises(SystemExit):
        reproduce_parallel.parse(["--deadline", "5", "--stop-after", "9", "--", "--seeds", "0"])
    with pytest.raises(SystemExit):  # no study flags: refused rather than the default study on every core
        reproduce_parallel.parse(["--deadline", "9", "--stop-after", "5"])
    with pytest.raises(SystemExit):
        reproduce_parallel.parse(["--deadline", "9", "--stop-after", "5", "--", "--shards", "3"])
    with pytest.raises(SystemExit, match="missing.pt does not exist"):
        reproduce_parallel.main(["--deadline", "9", "--stop-after", "5", "--", "--teacher",
                                 str(tmp_path / "missing.pt"), "--work", str(work)])


def test_the_results_doc_parallel_commands_parse():
    import shlex
    from pathlib import Path

    from benchmarks import reproduce, reproduce_t2i

    text = (Path(reproduce_parallel.__file__).resolve().parents[1] / "docs" / "RESULTS.md").read_text()
    commands = [c.strip() for c in text.replace("\\\n", " ").splitlines() if "-m benchmarks.reproduce_parallel" in c]
    assert commands  # the GPU procedure of the converged study at least
    for command in commands:
        words = shlex.split(command.split("#")[0].replace("$OUT", "OUT"))
        args = reproduce_parallel.parse(words[words.index("benchmarks.reproduce_parallel") + 1:])
        study = (reproduce_t2i if args.script == "reproduce_t2i" else reproduce).parse_args(args.reproduce)
        assert study.device == "cuda" and args.stop_after < args.deadline <= 570  # inside one 10-minute call


def test_both_studies_refuse_a_device_they_cannot_use():
    import torch

    from benchmarks import reproduce, reproduce_t2i

    for study in (reproduce, reproduce_t2i):
        with pytest.raises(SystemExit, match="'gpu0' is not a device"):
            study.check_args(study.parse_args(["--device", "gpu0"]))
        if not torch.cuda.is_available():
            with pytest.raises(SystemExit, match="sees no CUDA device"):
                study.check_args(study.parse_args(["--device", "cuda"]))
