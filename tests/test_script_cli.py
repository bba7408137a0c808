"""What every script shares: the loader's overrides (--norm-groups, --preset) reach the loader and what it
assumed is printed; user errors are one line "error: ..." with exit status 2 (--debug for the traceback);
malformed inputs are named; every flag has help and the shared flags are spelled once; every command the
README and docs/ print parses; the known-answer data ships."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

import evaluate
import train
from common import cli
from models.checkpoint import read_checkpoint
from models.loading import load, load_with_info
from script_helpers import REPO, ddim_state_dict_with_8_groups, eval_config, run_cli, small_checkpoint


@pytest.mark.parametrize("script", [train, evaluate, "prune"])
def test_every_script_passes_norm_groups_and_preset_to_the_loader(script):
    if script == "prune":
        import prune as script
    argv = ["--norm-groups", "8", "--preset", "cifar10"]
    parsed = script.parse_args(argv if script is not evaluate else ["m.ckpt", *argv])
    cfg = parsed[0] if isinstance(parsed, tuple) else parsed
    assert cfg.norm_groups == 8 and cfg.preset == "cifar10"


def test_norm_groups_override_gives_the_right_function_and_the_assumption_is_printed(tmp_path, capsys):
    path, reference = ddim_state_dict_with_8_groups(tmp_path)
    x, t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([10.0, 500.0])
    right = load(path, norm_groups=8)
    with torch.no_grad():
        torch.testing.assert_close(right(x, t), reference(x, t))
    # Without the override the loader assumes the DDPM's 32 groups, and the scripts print that it did.
    wrong, info = load_with_info(path)
    assert wrong.config.norm_groups == 32
    cli.print_load_notes(str(path), info, "evaluate")
    printed = capsys.readouterr().out
    assert "norm_groups=32" in printed and str(path) in printed
    with torch.no_grad():
        assert not torch.allclose(wrong(x, t), reference(x, t), atol=1e-3)


def test_user_errors_are_one_line_with_exit_status_2_and_debug_shows_the_traceback(tmp_path, capsys):
    status, _, err = run_cli(train, ["--resume", str(tmp_path / "nope")], capsys)
    assert status == 2 and err.startswith("error: --resume") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    status, _, err = run_cli(train, ["--resume", str(tmp_path / "nope"), "--debug"], capsys)
    assert status == 2 and "Traceback" in err and "error: --resume" in err


def test_output_folder_that_is_a_file_is_an_error_before_loading(tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("a file")
    status, _, err = run_cli(train, ["--model", "tiny", "--out", str(blocker / "runs"), "--steps", "1"], capsys)
    assert status == 2 and "--out" in err and "is a file" in err
    status, _, err = run_cli(evaluate, ["tiny", "--out", str(blocker), "--num-samples", "2"], capsys)
    assert status == 2 and "--out" in err


def test_text_file_given_as_a_checkpoint(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes\n")
    status, _, err = run_cli(evaluate, [str(text), "--num-samples", "2"], capsys)
    assert status == 2 and str(text) in err and "text file" in err and "'these are my notes'" in err
    assert len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load(empty)
    with pytest.raises(ValueError, match="text file"):
        read_checkpoint(text)


def _write_diffusers_folder(folder: Path, **config_changes) -> Path:
    from test_loading import DIFFUSERS_CONFIG

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**DIFFUSERS_CONFIG, **config_changes}))
    torch.save({}, folder / "diffusion_pytorch_model.bin")
    return folder


@pytest.mark.parametrize("key, value", [("layers_per_block", "2"), ("norm_num_groups", 2.5),
                                        ("block_out_channels", [32, "64"]), ("in_channels", None)])
def test_diffusers_config_with_a_non_integer_field(tmp_path, key, value):
    folder = _write_diffusers_folder(tmp_path / "unet", **{key: value})
    with pytest.raises(ValueError, match=rf"config\.json: key '{key}' must be"):
        load(folder)


def test_project_model_config_with_a_non_integer_field(tmp_path):
    path = small_checkpoint(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["ch"] = 8.5
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"m\.pt: model_config: key 'ch' must be an integer, found 8.5"):
        load(path)


@pytest.mark.parametrize("name", ["train", "prune", "evaluate"])
def test_every_flag_has_help(name):
    import importlib
    module = importlib.import_module(name)
    parsers = [module.build_parser()]
    for p in parsers:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):  # evaluate.py's subcommands
                parsers.extend(action.choices.values())
                continue
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


def test_shared_flags_are_spelled_once():
    import prune
    for parser in (train.build_parser(), prune.build_parser()):
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {"--model", "--preset", "--norm-groups", "--data", "--data-root", "--seed", "--out", "--device",
                "--debug"} <= flags
        data = next(a for a in parser._actions if "--data" in a.option_strings)
        assert tuple(data.choices) == ("shapes", "cifar10", "folder", "celeba")


def test_bad_devices_and_foreign_folders_are_errors(tmp_path, capsys):
    status, _, err = run_cli(train, ["--device", "bogus"], capsys)
    assert status == 2 and "'bogus' is not a torch device" in err
    if not torch.cuda.is_available():
        status, _, err = run_cli(evaluate, ["tiny", "--device", "cuda"], capsys)
        assert status == 2 and "no CUDA device" in err
    folder = tmp_path / "not-an-eval-run"
    folder.mkdir()
    with pytest.raises(cli.UserError, match="not an evaluate.py run folder"):
        evaluate.main(eval_config(tmp_path, [small_checkpoint(tmp_path / "a.pt")]), resume=str(folder))
    assert list(folder.iterdir()) == []  # nothing sampled into it
    with pytest.raises(ValueError, match="--data-root"):  # held-out data asked for but unreadable: before sampling
        evaluate.main(eval_config(tmp_path, [tmp_path / "a.pt"], heldout_images=4, data="folder"))
    assert not (tmp_path / "eval").exists()


def test_readme_commands_parse():
    """Every train.py / prune.py / evaluate.py / generate.py command printed in README.md and the docs/ pages is accepted by
    its parser (the GPU recipe's --device cuda is checked as cpu where this machine has no CUDA)."""
    import re
    import shlex

    import generate
    import prune
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        commands += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()[:1] not in ("", "#")]
    commands += re.findall(r"`(python (?:train|prune|evaluate|generate)\.py[^`]*)`", text)
    scripts = {"train.py": train, "prune.py": prune, "evaluate.py": evaluate, "generate.py": generate}
    checked = 0
    for command in commands:
        if not torch.cuda.is_available():
            command = command.replace("--device cuda", "--device cpu")
        tokens = shlex.split(command)
        script = next((t for t in tokens if t in scripts), None)
        if script is None or "--help" in tokens:  # a pointer to the reference, not a run
            continue
        if "--replay" in tokens:  # reads the run folder's spec.json while parsing: checked for the flag only
            assert "--replay" in {s for a in scripts[script].build_parser()._actions for s in a.option_strings}
            continue
        scripts[script].parse_args(tokens[tokens.index(script) + 1:])  # SystemExit fails the test
        checked += 1
    assert checked >= 8


def test_known_answer_data_ships_and_no_test_skips_for_it():
    """tests/data/golden and tests/data/reference are part of the repository: the known-answer files are
    there, and no test turns a missing one into a skip."""
    import re

    golden, reference = REPO / "tests" / "data" / "golden", REPO / "tests" / "data" / "reference"
    assert (golden / "README.md").is_file()
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text()
        for match in re.finditer(r"pytest\.skip\((.*)", text):
            assert not re.search(r"golden|reference", match.group(1)), f"{path.name} skips for missing data"
    for name in ("unet_tiny.pt", "diffpruning_paper.pt", "fid_inception.npz", "frechet.npz", "ssim.npz"):
        assert (golden / name).is_file(), name
    for name in ("fid_inception_layout.txt", "unet_cifar10_ddim_layout.txt", "unet_cifar10_diffusers_layout.txt"):
        assert (reference / name).is_file(), name
