"""The three scripts as a user meets them: no lost work, no stale results, one-line errors before the work.

One test (or more) per case of the scripts' contract:
  1. a run folder is found by the marker the run wrote, never by path arithmetic;
  2. evaluation samples are keyed by the weights and every sampling setting;
  3. the loader's overrides (--norm-groups, --preset) reach the loader, and what it assumed is printed;
  4. non-finite weights, EMA weights or held-out loss stop training; "last good" is a verified checkpoint;
  5. --steps is the total; a finished run says so;
  6. (tests/test_evaluate.py) Inception weights that are not the FID release give another metric name;
  7. one process per run folder (a lock); files a kill left half-written are cleaned up;
plus the error messages: one line "error: ...", exit status 2, --debug for the traceback.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import train
from common import cli
from common.runs import RunLock, RunLocked
from metrics.evaluation import SamplerConfig, SampleFolderMismatch, load_samples
from models.checkpoint import read_checkpoint, save_checkpoint
from models.ddpm.config import ModelConfig
from models.loading import load, load_with_info
from models.ddpm.unet import UNet

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, norm_groups=2)


def small_checkpoint(path: Path, seed: int = 0, **kw) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(**{**SMALL, **kw})
    save_checkpoint(path, config=config, state_dict=UNet(config).state_dict())
    return path


def train_config(tmp_path: Path, model: Path, **kw) -> train.TrainConfig:
    base = dict(model=str(model), data="shapes", steps=4, batch_size=2, lr=1e-3, ckpt_every=2, log_every=1,
                heldout_images=2, ema_decay=0.9, out=str(tmp_path / "runs"))
    return train.TrainConfig(**{**base, **kw})


def eval_config(tmp_path: Path, models, **kw) -> evaluate.EvalConfig:
    base = dict(models=tuple(str(m) for m in models), num_samples=2, sampler=SamplerConfig(steps=2), batch_size=2,
                heldout_images=0, out=str(tmp_path / "eval"))
    return evaluate.EvalConfig(**{**base, **kw})


def run_cli(script, argv, capsys) -> tuple[int, str, str]:
    """Run a script's command line in-process: (exit status, stdout, stderr)."""
    main = script.run_command if script is evaluate else script.main
    try:
        status = cli.run(main, script.parse_args, argv)
    except SystemExit as e:  # argparse's own errors
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


# ----------------------------------------------------------------------------------------------- case 1
def test_resume_of_a_checkpoint_copied_out_of_its_run_is_refused(tmp_path):
    model = small_checkpoint(tmp_path / "init.pt")
    run = train.main(train_config(tmp_path, model, steps=1, ckpt_every=1, heldout_images=0))
    # The copy sits two levels below a folder that holds files the resume must never overwrite.
    elsewhere = tmp_path / "mine" / "backup"
    elsewhere.mkdir(parents=True)
    (tmp_path / "mine" / "model.pt").write_text("precious")
    (tmp_path / "mine" / "config.json").write_text("precious")
    shutil.copy(run / "checkpoints" / "latest.pt", elsewhere / "latest.pt")
    with pytest.raises(cli.UserError, match="not inside the run folder that wrote it"):
        train.main(train.TrainConfig(steps=4), resume=str(elsewhere / "latest.pt"))
    assert (tmp_path / "mine" / "model.pt").read_text() == "precious"
    assert (tmp_path / "mine" / "config.json").read_text() == "precious"
    # A checkpoint inside another run's checkpoints/ folder is refused by the run id.
    other = train.main(train_config(tmp_path, model, steps=1, ckpt_every=1, heldout_images=0))
    shutil.copy(run / "checkpoints" / "latest.pt", other / "checkpoints" / "latest.pt")
    with pytest.raises(cli.UserError, match="written by another run"):
        train.main(train.TrainConfig(steps=4), resume=str(other / "checkpoints" / "latest.pt"))
    # The run folder itself (or its own latest.pt) resumes, in place.
    assert train.main(train.TrainConfig(steps=2), resume=str(run)) == run
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]["step"] == 2


# ----------------------------------------------------------------------------------------------- case 2
def test_evaluate_resume_refuses_samples_of_another_model_with_the_same_name(tmp_path):
    a = small_checkpoint(tmp_path / "a" / "pruned.pt", seed=0)
    run = evaluate.main(eval_config(tmp_path, [a]))
    b = small_checkpoint(tmp_path / "b" / "pruned.pt", seed=1)  # same file name, other weights
    before = {p.name: p.read_bytes() for p in (run / "0-pruned" / "samples").glob("*.png")}
    with pytest.raises(SampleFolderMismatch, match="weights"):
        evaluate.main(eval_config(tmp_path, [b]), resume=str(run))
    after = {p.name: p.read_bytes() for p in (run / "0-pruned" / "samples").glob("*.png")}
    assert before == after  # nothing overwritten, nothing reported
    # The same model resumes.
    evaluate.main(eval_config(tmp_path, [a], num_samples=3), resume=str(run))
    assert len(load_samples(run / "0-pruned" / "samples", 3)) == 3


def test_evaluate_resume_refuses_samples_drawn_with_other_settings(tmp_path):
    a = small_checkpoint(tmp_path / "a.pt")
    run = evaluate.main(eval_config(tmp_path, [a]))
    for change, named in [(dict(steps=3), "--steps 2 vs 3"), (dict(seed=1), "--seed 0 vs 1"),
                          (dict(clip_x0=True), "--clip-x0 False vs True"), (dict(eta=0.5), "--eta 0.0 vs 0.5"),
                          (dict(skip_type="quad"), "--skip-type uniform vs quad"), (dict(sampler="ddpm"), "--sampler")]:
        sampler = SamplerConfig(**{"steps": 2, **change})
        with pytest.raises(SampleFolderMismatch, match=named):
            evaluate.main(eval_config(tmp_path, [a], sampler=sampler), resume=str(run))


def test_evaluate_resume_refuses_a_folder_without_a_sampling_record(tmp_path):
    a = small_checkpoint(tmp_path / "a.pt")
    run = evaluate.main(eval_config(tmp_path, [a]))
    (run / "0-a" / "samples" / "sampling.json").unlink()  # e.g. a folder from before the record existed
    with pytest.raises(SampleFolderMismatch, match="no sampling.json"):
        evaluate.main(eval_config(tmp_path, [a]), resume=str(run))


# ----------------------------------------------------------------------------------------------- case 3
def ddim_state_dict_with_8_groups(tmp_path: Path) -> tuple[Path, UNet]:
    torch.manual_seed(0)
    model = UNet(ModelConfig(image_size=32, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                             dropout=0.0, norm_groups=8)).eval()
    path = tmp_path / "ddim_8groups.ckpt"
    torch.save(model.state_dict(), path)  # a plain DDIM-codebase state dict: the group count is not stored
    return path, model


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


def test_evaluate_prints_the_assumed_fields_and_uses_the_override(tmp_path, capsys):
    path, _ = ddim_state_dict_with_8_groups(tmp_path)
    cfg, _ = evaluate.parse_args([str(path), "--norm-groups", "8", "--num-samples", "2", "--steps", "1",
                                  "--heldout-images", "0", "--out", str(tmp_path / "eval")])
    run = evaluate.main(cfg)
    printed = capsys.readouterr().out
    assert "norm_groups=8 from the caller" in printed
    assert json.loads((run / "report.json").read_text())["config"]["norm_groups"] == 8


# ----------------------------------------------------------------------------------------------- case 4
def test_non_finite_ema_weights_stop_the_run_and_last_good_is_verified(tmp_path, monkeypatch):
    model = small_checkpoint(tmp_path / "init.pt")
    real_update, calls = train.EMA.update, {"n": 0}

    def poisoned_update(self, m):
        real_update(self, m)
        calls["n"] += 1
        if calls["n"] == 3:  # the EMA of step 3 goes bad; the raw weights and the loss stay finite
            next(self.model.parameters()).data.fill_(float("nan"))

    monkeypatch.setattr(train.EMA, "update", poisoned_update)
    with pytest.raises(FloatingPointError, match=r"non-finite EMA weight .* at step 4.*latest\.pt \(step 2\)"):
        train.main(train_config(tmp_path, model, steps=4, ckpt_every=2, heldout_images=0))
    run = next((tmp_path / "runs").iterdir())
    last = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert last["train_state"]["step"] == 2 and last["meta"]["verified_finite"]
    assert all(torch.isfinite(v).all() for v in last["ema_state_dict"].values())
    assert not (run / "model.pt").exists()


def test_non_finite_heldout_loss_stops_the_run(tmp_path, monkeypatch):
    model = small_checkpoint(tmp_path / "init.pt")
    monkeypatch.setattr(train.HeldOutLoss, "__call__", lambda self, m, batch_size=64: float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite held-out loss nan at step 2.*none yet"):
        train.main(train_config(tmp_path, model, steps=4, ckpt_every=2))
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "checkpoints" / "latest.pt").exists()  # an unverified state is never saved


# ----------------------------------------------------------------------------------------------- case 5
def test_steps_is_the_total_and_a_finished_run_says_so(tmp_path, capsys):
    model = small_checkpoint(tmp_path / "init.pt")
    run = train.main(train_config(tmp_path, model, steps=3, ckpt_every=3, heldout_images=0))
    released = (run / "model.pt").read_bytes()
    assert read_checkpoint(run / "model.pt")["meta"]["steps"] == 3
    with pytest.raises(cli.UserError, match="--steps 2 is the TOTAL.*already at step 3"):
        train.main(train.TrainConfig(steps=2), resume=str(run / "checkpoints" / "latest.pt"))
    capsys.readouterr()
    assert train.main(train.TrainConfig(steps=None), resume=str(run)) == run
    assert "already finished" in capsys.readouterr().out
    assert (run / "model.pt").read_bytes() == released  # nothing rewritten
    # The command line: --resume with only --steps / --device; other flags are an error, not ignored.
    assert train.parse_args(["--resume", str(run)])[0].steps is None
    with pytest.raises(SystemExit):
        train.parse_args(["--resume", str(run), "--lr", "1"])


# ----------------------------------------------------------------------------------------------- case 7
def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    model = small_checkpoint(tmp_path / "init.pt")
    run = train.main(train_config(tmp_path, model, steps=1, ckpt_every=1, heldout_images=0))
    with RunLock(run, "training this run"):  # another live process holds the run
        with pytest.raises(RunLocked, match="in use by another process"):
            train.main(train.TrainConfig(steps=2), resume=str(run))
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]["step"] == 1
    # The lock dies with its holder: now the resume proceeds, and cleans up what a kill left half-written.
    stale = run / "checkpoints" / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    train.main(train.TrainConfig(steps=2), resume=str(run))
    assert not stale.exists()
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["train_state"]["step"] == 2


def test_evaluate_takes_the_lock_and_removes_partial_pngs(tmp_path):
    a = small_checkpoint(tmp_path / "a.pt")
    run = evaluate.main(eval_config(tmp_path, [a]))
    partial = run / "0-a" / "samples" / "000001.tmp.png"
    partial.write_bytes(b"\x89PNG half")
    with RunLock(run, "evaluating"):
        with pytest.raises(RunLocked):
            evaluate.main(eval_config(tmp_path, [a]), resume=str(run))
    evaluate.main(eval_config(tmp_path, [a]), resume=str(run))
    assert not partial.exists()


# ----------------------------------------------------------------------------------------------- messages
def test_user_errors_are_one_line_with_exit_status_2_and_debug_shows_the_traceback(tmp_path, capsys):
    status, _, err = run_cli(train, ["--resume", str(tmp_path / "nope")], capsys)
    assert status == 2 and err.startswith("error: --resume") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    status, _, err = run_cli(train, ["--resume", str(tmp_path / "nope"), "--debug"], capsys)
    assert status == 2 and "Traceback" in err and "error: --resume" in err


@pytest.mark.parametrize("flag", ["--batch-size", "--ckpt-every", "--steps", "--log-every"])
def test_train_counts_must_be_at_least_one(flag, capsys):
    status, _, err = run_cli(train, [flag, "0"], capsys)
    assert status == 2 and flag in err and ">= 1" in err


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


def test_truncated_png_is_named(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i:06d}.png")
    data = (folder / "000001.png").read_bytes()
    (folder / "000001.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"000001\.png"):
        load_samples(folder, 2)
    from metrics.fid import ImageFolder
    with pytest.raises(OSError, match=r"000001\.png"):
        ImageFolder(sorted(folder.glob("*.png")))[1]


def test_fid_inputs_are_checked_before_any_sampling(tmp_path, capsys):
    model = small_checkpoint(tmp_path / "m.pt")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(cli.UserError, match="2048"):
        evaluate.main(eval_config(tmp_path, [model], fid_stats=str(wrong), inception_weights=str(wrong)))
    with pytest.raises(cli.UserError, match="--inception-weights .*no such file"):
        evaluate.main(eval_config(tmp_path, [model], fid_stats=str(wrong), inception_weights=str(tmp_path / "no.pth")))
    assert not (tmp_path / "eval").exists()  # nothing sampled
    status, _, err = run_cli(evaluate, [str(model), "--fid-stats", str(tmp_path / "stats.np")], capsys)
    assert status == 2 and ".npz" in err
    status, _, err = run_cli(evaluate, ["fid-stats", str(tmp_path), "--out", "s.txt"], capsys)
    assert status == 2 and ".npz" in err
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    status, _, err = run_cli(evaluate, ["fid-stats", str(tmp_path), "--out", str(wrong)], capsys)
    assert status == 2 and "exists" in err and np.load(wrong)["mu"].shape == (64,)  # never overwritten


# ----------------------------------------------------------------------------------------------- CLI shape
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


def test_fid_stats_is_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    assert "fid-stats" in capsys.readouterr().out
    cfg, _ = evaluate.parse_args(["fid-stats", "imgs", "--out", "s.npz"])
    assert isinstance(cfg, evaluate.FidStatsConfig) and cfg.image_dir == "imgs"
    cfg, _ = evaluate.parse_args(["a.pt", "--num-samples", "4"])  # the default subcommand
    assert cfg.models == ("a.pt",) and cfg.num_samples == 4


def test_prune_num_samples_zero_skips_the_grids(tmp_path):
    import prune
    teacher = small_checkpoint(tmp_path / "teacher.pt")
    run = prune.main(prune.parse_args(["--model", str(teacher), "--method", "magnitude", "--num-samples", "0",
                                       "--out", str(tmp_path / "p")]))
    assert (run / "pruned.pt").is_file() and not list(run.glob("samples_*.png"))


def test_train_flips_half_the_batch_when_asked(tmp_path, monkeypatch):
    """data/__init__.py's promise: datasets do not augment, train.py flips (one mask per global batch)."""
    model = small_checkpoint(tmp_path / "init.pt")
    batches = []
    real = train.eps_loss

    def spy(net, schedule, x0, *args, **kwargs):
        batches.append(x0.clone())
        return real(net, schedule, x0, *args, **kwargs)

    monkeypatch.setattr(train, "eps_loss", spy)
    for flip in (False, True):
        train.main(train_config(tmp_path, model, steps=1, batch_size=16, heldout_images=0, random_flip=flip))
    plain, flipped = batches
    same = [torch.equal(a, b) for a, b in zip(plain, flipped)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(plain, flipped)]
    assert all(s or m for s, m in zip(same, mirrored))  # each image is itself or its mirror image
    assert 0 < sum(not s for s in same) < 16  # and some, not all, were flipped


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
    """Every train.py / prune.py / evaluate.py command printed in README.md is accepted by its parser (the
    GPU recipe's --device cuda is checked as cpu where this machine has no CUDA)."""
    import re
    import shlex

    import prune
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        commands += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()[:1] not in ("", "#")]
    commands += re.findall(r"`(python (?:train|prune|evaluate)\.py[^`]*)`", text)
    scripts = {"train.py": train, "prune.py": prune, "evaluate.py": evaluate}
    checked = 0
    for command in commands:
        if not torch.cuda.is_available():
            command = command.replace("--device cuda", "--device cpu")
        tokens = shlex.split(command)
        script = next((t for t in tokens if t in scripts), None)
        if script is None:
            continue
        scripts[script].parse_args(tokens[tokens.index(script) + 1:])  # SystemExit fails the test
        checked += 1
    assert checked >= 8


def test_pruning_api_names_a_bad_head_mode():
    from pruning.api import prune
    config = ModelConfig(**SMALL)
    model = UNet(config).eval()
    with pytest.raises(ValueError, match="head_mode must be one of .* got 'head'"):
        prune(model, model.example_inputs(), method="random", ratio=0.3, head_mode="head", progress=False)


def test_fid_data_with_a_truncated_image_fails_before_sampling(tmp_path, monkeypatch):
    import metrics.inception as inception

    class FakeInception(torch.nn.Module):  # stands in for the 91 MB network: only the data path is tested
        weights_path, weights_sha256, is_fid_release = "fake.pth", "6726825d" + "0" * 56, True

        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    monkeypatch.setattr(inception, "load_fid_inception", lambda *a, **k: FakeInception())
    images = tmp_path / "real"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    data = (images / "2.png").read_bytes()
    (images / "2.png").write_bytes(data[: len(data) // 2])
    model = small_checkpoint(tmp_path / "m.pt")
    with pytest.raises(OSError, match=r"2\.png"):
        evaluate.main(eval_config(tmp_path, [model], fid_data=str(images)))
    assert not list((tmp_path / "eval").rglob("*.png"))  # no sample was drawn


def test_prune_reads_its_data_before_drawing_the_sample_grids(tmp_path, monkeypatch):
    import prune
    teacher = small_checkpoint(tmp_path / "teacher.pt")
    empty = tmp_path / "no-images"
    empty.mkdir()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the data was checked")

    monkeypatch.setattr(prune, "sample", no_sampling)
    with pytest.raises(OSError, match="contains no images"):
        prune.main(prune.parse_args(["--model", str(teacher), "--data", "folder", "--data-root", str(empty),
                                     "--out", str(tmp_path / "p")]))
    assert not (tmp_path / "p").exists()


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
