"""Pretrained models by hub name (models/hub.py). No test touches the network: ``snapshot_download`` is
replaced by a function that writes the golden diffusers U-Net into a folder, or fails as offline does."""
from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

import prune
import train
from common import cli
from models.hub import HubDownloadError, looks_like_hub_name
from models.loading import load, load_with_info
from test_loading import DIFFUSERS_CONFIG, GOLDEN

NAME = "google/ddpm-cifar10-32"


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.is_file(), f"{GOLDEN} is part of the repository"
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, golden):
    """snapshot_download as the Hub serves google/ddpm-cifar10-32: config.json + safetensors in a cache folder."""
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, cache_dir=None, **kw):
        calls.append((repo_id, tuple(allow_patterns or ())))
        folder = tmp_path / "hf-cache" / repo_id.replace("/", "--")
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps(DIFFUSERS_CONFIG))
            save_file({k: v.contiguous() for k, v in golden["state_dict_diffusers_layout"].items()},
                      str(folder / "diffusion_pytorch_model.safetensors"))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_a_hub_name_loads_the_diffusers_unet(fake_hub, golden):
    model, info = load_with_info(NAME)
    with torch.no_grad():
        eps = model(golden["x"], golden["t"].float())
    torch.testing.assert_close(eps, golden["eps"], rtol=1e-4, atol=1e-4)
    assert info["format"] == "diffusers-hub" and info["source"] == NAME
    assert f"https://huggingface.co/{NAME}" in info["weights"]
    # Only the U-Net's config and weights are asked for (safetensors first), never the whole repository.
    repo_id, patterns = fake_hub[0]
    assert repo_id == NAME and "config.json" in patterns
    assert all(p.endswith((".json", ".safetensors")) for p in patterns)


def test_offline_is_one_line_naming_the_url_and_the_local_alternative(monkeypatch, capsys, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HubDownloadError, match=rf"https://huggingface.co/{NAME}.*--model ddpm-cifar10-32"):
        load(NAME)
    status = cli.run(prune.main, prune.parse_args, ["--model", NAME, "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert f"https://huggingface.co/{NAME}" in err and "huggingface-cli download" in err
    assert not (tmp_path / "p").exists()


def test_what_counts_as_a_hub_name(tmp_path, monkeypatch):
    assert looks_like_hub_name(NAME) and looks_like_hub_name("google/ddpm-ema-church-256")
    assert not looks_like_hub_name("tiny") and not looks_like_hub_name("runs/model.pt")
    assert not looks_like_hub_name("a/b/c")
    monkeypatch.chdir(tmp_path)
    Path("google").mkdir()
    Path(NAME).mkdir()
    assert not looks_like_hub_name(NAME)  # a local folder of that name wins


def test_train_accepts_a_hub_name(fake_hub):
    cfg, _ = train.parse_args(["--model", NAME])
    assert cfg.model == NAME
    model, origin, parts = train.build_model(cfg)
    assert origin.startswith("diffusers-hub") and model.training and parts is None  # a DDPM: no frozen parts


# ----------------------------------------------------------------------------------------------- ddim:<name>
def test_ddim_codebase_checkpoint_is_md5_checked(tmp_path, monkeypatch, golden):
    """ddim:<name> downloads the DDIM codebase's file and uses it only when its MD5 is the published one."""
    import hashlib

    import models.hub as hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    served = tmp_path / "served.ckpt"
    torch.save(golden["state_dict_ddim_layout"], served)
    downloads = []

    def download(url, dst, progress=True):
        downloads.append(url)
        Path(dst).write_bytes(served.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    url, relative, _, _ = hub.DDIM_CHECKPOINTS["ema_cifar10"]
    # The published MD5 is not this file's: refused, and the file is not kept for a later call.
    with pytest.raises(HubDownloadError, match="not the published 1fa350b952534ae442b1d5235cce5cd3"):
        load("ddim:ema_cifar10")
    assert not (hub.ddim_cache_folder() / relative).exists()
    # With this file's MD5 in the table (and no preset: the golden U-Net is not the CIFAR-10 one) it loads.
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    monkeypatch.setitem(hub.DDIM_CHECKPOINTS, "ema_cifar10", (url, relative, md5, None))
    model, info = load_with_info("ddim:ema_cifar10")
    with torch.no_grad():
        torch.testing.assert_close(model(golden["x"], golden["t"].float()), golden["eps"], rtol=1e-4, atol=1e-4)
    assert "MD5 checked" in info["weights"] and downloads == [url, url]
    load("ddim:ema_cifar10")  # cached: no third download
    assert len(downloads) == 2


def test_ddim_codebase_offline_names_the_url_and_the_md5(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(HubDownloadError, match=r"heibox.*MD5 is 1fa350b9.*--model FILE --preset cifar10"):
        load("ddim:ema_cifar10")
    with pytest.raises(HubDownloadError, match="known: ddim:cifar10"):
        load("ddim:imagenet")
