"""benchmarks/reproduce_compare.py: the agreement between two runs' verdicts, on hand-made results."""
import json

import pytest

from benchmarks import reproduce_compare


def _stats(mean, std):
    return {"mean": mean, "std": std, "n": 3, "values": [mean - std, mean, mean + std]}


def _run(seeds, c1, c1_pairs, fd_dp):
    rows = {m: {"method": m, "seeds": seeds, "fd_shapes": _stats(fd, 10.0), "ssim_to_teacher": _stats(0.5, 0.1),
                "heldout_loss": _stats(0.01, 0.001)} for m, fd in (("diff-pruning@0.05", fd_dp), ("random", 500.0))}
    return {"benchmark": "reproduce", "command": f"python -m benchmarks.reproduce --seeds {seeds}",
            "rows": rows, "verdicts": {"C1": {"verdict": c1, "pairs": c1_pairs},
                                       "C3": {"verdict": "incomplete (curve missing)"}}}


def test_claims_and_pairs_are_classified():
    a = _run([0, 1, 2], "supported", {"dp vs random (fd_shapes)": "better", "dp vs random (heldout_loss)": "better"},
             fd_dp=100.0)
    b = _run([3, 4, 5], "not supported at this scale (spreads overlap)",
             {"dp vs random (fd_shapes)": "overlap", "dp vs random (heldout_loss)": "worse"}, fd_dp=130.0)
    r = reproduce_compare.compare(a, b)
    c1, c3 = r["claims"][0], r["claims"][1]
    assert c1["pairs"]["dp vs random (fd_shapes)"]["agreement"] == "one resolved"
    assert c1["pairs"]["dp vs random (heldout_loss)"]["agreement"] == "conflict"
    assert c1["agreement"] == "conflict"  # a better/worse flip outweighs the rest
    assert c3["agreement"] == "not in both runs"
    dp = next(m for m in r["methods"] if m["method"] == "diff-pruning@0.05")
    assert dp["fd_shapes"]["z"] == pytest.approx(30.0 / (2 ** 0.5 * 10.0))  # |100 - 130| / hypot(10, 10)
    assert dp["fd_shapes"]["within_noise"] is False
    assert r["a"]["seeds"] == [0, 1, 2] and r["b"]["seeds"] == [3, 4, 5]
    assert r["summary"] == {"agree": 0, "differ within noise": 0, "conflict": 1, "not in both runs": 1}


def test_identical_verdicts_agree_and_files_are_written(tmp_path):
    a = _run([0, 1, 2], "supported", {"p (fd_shapes)": "better"}, fd_dp=100.0)
    b = _run([3, 4, 5], "supported", {"p (fd_shapes)": "better"}, fd_dp=105.0)
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    docs = tmp_path / "RESULTS.md"
    docs.write_text(f"# Results\n\n{reproduce_compare.BEGIN}\nold table\n{reproduce_compare.END}\n\nhand-written\n")
    args = reproduce_compare.argparse.Namespace(a=str(pa), b=str(pb), out=str(tmp_path / "agree"), docs=str(docs))
    r = reproduce_compare.main(args)
    assert r["claims"][0]["agreement"] == "agree"
    assert "| C1 | supported | supported | **agree** |" in (tmp_path / "agree.md").read_text()
    assert json.loads((tmp_path / "agree.json").read_text())["summary"]["agree"] == 1
    text = docs.read_text()
    assert "old table" not in text and "| C1 | supported | supported | **agree** |" in text
    assert text.startswith("# Results\n") and text.endswith("hand-written\n")


def test_a_missing_or_foreign_file_is_named(tmp_path):
    other = tmp_path / "speed.json"
    other.write_text(json.dumps({"benchmark": "speed"}))
    for a, expected in ((tmp_path / "nope.json", "does not exist"), (other, "not a reproduce.py result")):
        args = reproduce_compare.argparse.Namespace(a=str(a), b=str(a), out=str(tmp_path / "x"), docs="")
        with pytest.raises(SystemExit, match=expected):
            reproduce_compare.main(args)


def test_docs_without_the_block_is_refused_before_writing(tmp_path):
    a = _run([0, 1, 2], "supported", {"p (fd_shapes)": "better"}, fd_dp=100.0)
    pa = tmp_path / "a.json"
    pa.write_text(json.dumps(a))
    docs = tmp_path / "RESULTS.md"
    docs.write_text("# Results without markers\n")
    args = reproduce_compare.argparse.Namespace(a=str(pa), b=str(pa), out=str(tmp_path / "agree"), docs=str(docs))
    with pytest.raises(SystemExit, match="RESULTS.md has no"):
        reproduce_compare.main(args)
    assert not (tmp_path / "agree.json").exists() and docs.read_text() == "# Results without markers\n"
