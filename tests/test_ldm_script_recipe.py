"""ChannelPruning(recipe="ldm-script"): Diff-Pruning's ImageNet-LDM script as one option (pruning/spec.py) and
its self-sampled gradient batch (pruning/self_sampled.py), on tiny class-conditional and text pipelines."""
from __future__ import annotations

import pytest
import torch

from diffusion.schedule import training_schedule
from models.pipelines import load_pipeline
from models.pipelines.text_to_image import generate, generate_latents
from pruning import ChannelPruning, prune
from pruning.self_sampled import draw, self_sampled_batch, x0_request
from pruning.spec import LDM_SCRIPT
from tiny_pipeline import write_tiny_pipeline

FAST = dict(x0_steps=3, max_timesteps=20)  # a few DDIM steps and timesteps: the tests' speed only


@pytest.fixture(scope="module")
def cin(tmp_path_factory):
    """The ImageNet-LDM layout at tiny size: VQ first stage, class embedder (10 classes + "no class"), a
    cross-attention U-Net with 2-head attention."""
    return load_pipeline(write_tiny_pipeline(tmp_path_factory.mktemp("cin") / "p", text=False, vq=True,
                                             class_embedder=True))


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    return load_pipeline(write_tiny_pipeline(tmp_path_factory.mktemp("t2i") / "p"))


def test_the_recipe_fills_the_scripts_settings():
    spec = ChannelPruning(recipe="ldm-script")
    assert (spec.thr, spec.batch_size, spec.x0_steps, spec.x0_guidance) == (0.1, 6, 20, 3.0)
    assert (spec.head_mode, spec.attn_grouping, spec.round_to, spec.ignored) == ("channels", "joint", 2, ("conv_out",))
    assert ChannelPruning().thr == 0.05 and ChannelPruning().recipe is None  # the DDPM script's default
    # the script's "taylor" / "diff0": every timestep, no threshold
    assert ChannelPruning(method="taylor-first-order", recipe="ldm-script").thr is None
    assert ChannelPruning(method="taylor", recipe="ldm-script").gradient_thr == 0.0
    # explicit values win; the caller's ignored paths keep theirs and gain the output conv
    spec = ChannelPruning(recipe="ldm-script", thr=0.02, batch_size=16, ignored=("conv_in",), x0_guidance=1)
    assert (spec.thr, spec.batch_size, spec.ignored, spec.x0_guidance) == (0.02, 16, ("conv_in", "conv_out"), 1.0)
    assert ChannelPruning(recipe="ldm-script", head_mode="heads").round_to is None
    assert ChannelPruning.from_dict(spec.to_dict()) == spec
    assert set(LDM_SCRIPT) <= set(spec.to_dict())  # every setting is recorded with the spec


@pytest.mark.parametrize("options, words", [
    (dict(recipe="ldm"), "recipe must be one of"),
    (dict(method="magnitude", recipe="ldm-script"), "applies to the gradient methods"),
    (dict(x0_steps=20), "x0_steps configures the self-sampled x0"),
    (dict(x0_guidance=3.0), "x0_guidance configures"),
    (dict(recipe="ldm-script", x0_guidance=0.5), "x0_guidance: guidance scale must be >= 1"),
    (dict(recipe="ldm-script", x0_steps=0), "x0_steps must be a whole number"),
])
def test_recipe_errors_are_one_line(options, words):
    with pytest.raises(ValueError, match=words) as e:
        ChannelPruning(**options)
    assert "\n" not in str(e.value)


def test_a_sweep_drops_the_recipe_for_methods_without_gradients():
    options = dict(recipe="ldm-script", x0_steps=5, thr=0.1)
    assert ChannelPruning.applicable(method="magnitude", **options).recipe is None
    assert ChannelPruning.applicable(method="diff-pruning", **options).x0_steps == 5
    with pytest.raises(ValueError, match="takes x0 as data"):
        x0_request(ChannelPruning())


def test_draw_is_distinct_while_it_can_be():
    g = torch.Generator().manual_seed(0)
    assert sorted(draw(10, 10, g)) == list(range(10))
    more = draw(25, 10, g)
    assert len(more) == 25 and [more[:10].count(i) for i in range(10)] == [1] * 10


def test_x0_are_the_pipelines_own_guided_ddim_samples(cin):
    spec = ChannelPruning(recipe="ldm-script", **FAST)
    data, record = self_sampled_batch(cin, spec)
    assert data.x0.shape == (6, cin.latent_channels, 8, 8) and data.x0.dtype == torch.float32
    assert not data.x0.is_inference() and not data.x0.requires_grad
    labels = record["class_labels"]
    assert len(set(labels)) == 6 and all(0 <= c < cin.num_classes for c in labels)  # random.sample's classes
    assert record == {"count": 6, "steps": 3, "guidance_scale": 3.0, "scheduler": "ddim", "eta": 0.0, "seed": 0,
                      "x_T_seed": 1, "class_labels": labels}
    # exactly the latents generate() decodes: guided DDIM of the class labels drawn, seed 1's x_T
    request = x0_request(spec)
    torch.testing.assert_close(data.x0, generate_latents(cin, request, range(6), class_labels=labels), atol=0, rtol=0)
    images = generate(cin, request, range(2), class_labels=labels[:2])
    torch.testing.assert_close(((cin.vae.decode(cin.vae.from_latent(data.x0[:2])) + 1) / 2).clamp(0, 1), images)
    # guidance matters: scale 1 gives other latents from the same x_T
    plain, _ = self_sampled_batch(cin, ChannelPruning(recipe="ldm-script", x0_guidance=1.0, **FAST))
    assert (plain.x0 - data.x0).abs().max() > 1e-3
    # each latent's condition is its own class token (B, 1, D) for cross-attention
    with torch.no_grad():
        torch.testing.assert_close(data.encoder_hidden_states, cin.class_embedder(torch.tensor(labels)))
    assert data.class_labels is None


def test_x0_are_determined_by_the_seed(cin):
    a, rec_a = self_sampled_batch(cin, ChannelPruning(recipe="ldm-script", seed=3, **FAST))
    b, rec_b = self_sampled_batch(cin, ChannelPruning(recipe="ldm-script", seed=3, **FAST))
    c, rec_c = self_sampled_batch(cin, ChannelPruning(recipe="ldm-script", seed=4, **FAST))
    torch.testing.assert_close(a.x0, b.x0, atol=0, rtol=0)
    assert rec_a == rec_b and rec_a["class_labels"] != rec_c["class_labels"]
    assert (a.x0 - c.x0).abs().max() > 1e-3
    # a batch of 8 starts with the batch of 6 where the labels agree (per-sample seeds, any batch split)
    big, rec_big = self_sampled_batch(cin, ChannelPruning(recipe="ldm-script", seed=3, batch_size=8,
                                                          micro_batch=3, **FAST))
    assert rec_big["class_labels"][:6] == rec_a["class_labels"]
    torch.testing.assert_close(big.x0[:6], a.x0, atol=1e-5, rtol=1e-5)


def test_a_text_pipeline_draws_captions(t2i):
    spec = ChannelPruning(recipe="ldm-script", batch_size=4, **FAST)
    with pytest.raises(ValueError, match="needs? captions|need captions"):
        self_sampled_batch(t2i, spec)
    captions = ["a red circle", "a blue square", "a green circle"]
    data, record = self_sampled_batch(t2i, spec, prompts=captions)
    assert data.x0.shape == (4, t2i.latent_channels, 8, 8) and set(record["prompts"]) == set(captions)
    assert data.encoder_hidden_states.shape[0] == 4 and "class_labels" not in record


def test_an_sdxl_pipeline_gets_its_added_conditions(tmp_path):
    pipe = load_pipeline(write_tiny_pipeline(tmp_path / "xl", sdxl=True))
    spec = ChannelPruning(recipe="ldm-script", batch_size=3, **FAST)
    data, record = self_sampled_batch(pipe, spec, prompts=["a red circle", "a blue square"])
    H = 8 * pipe.vae_scale
    assert data.added_cond_kwargs["time_ids"].tolist() == [[H, H, 0, 0, H, H]] * 3  # SDXL's micro-conditioning
    assert data.added_cond_kwargs["text_embeds"].shape[0] == 3 and len(record["prompts"]) == 3
    pruned, report = prune(pipe.unet, pipe.unet.example_inputs(), spec, data=data,
                           schedule=training_schedule(pipe.scheduler), progress=False)
    assert report.params_after < report.params_before


def test_a_tiny_class_conditional_ldm_prunes_end_to_end(cin):
    unet = load_pipeline_unet_copy(cin)
    spec = ChannelPruning(method="diff-pruning", recipe="ldm-script", **FAST)
    data, record = self_sampled_batch(cin, spec)
    before = {n: p.clone() for n, p in unet.state_dict().items()}
    pruned, report = prune(unet, unet.example_inputs(), spec, data=data,
                           schedule=training_schedule(cin.scheduler), progress=False)
    assert report.params_after < 0.8 * report.params_before
    assert report.timesteps.thr == 0.1 and report.summary()["spec"]["recipe"] == "ldm-script"
    assert report.summary()["spec"]["x0_steps"] == 3 and report.summary()["spec"]["x0_guidance"] == 3.0
    # the output conv keeps its output channels (its inputs follow the last level like any consumer)
    assert pruned.conv_out.weight.shape[0] == before["conv_out.weight"].shape[0]
    assert pruned.conv_out.weight.shape[1] < before["conv_out.weight"].shape[1]
    # q/k/v grouped by heads: every head loses the same channels; q, k, v keep the same ones (joint)
    heads = 0
    for path, roles in report.kept.items():
        if path.endswith("attn1.to_q") or path.endswith("attn2.to_q"):
            attn = pruned.get_submodule(path.rsplit(".", 1)[0])
            dense = before[f"{path}.weight"].shape[0]
            per = dense // attn.heads
            out = roles["out"]
            counts = [int(((out >= h * per) & (out < (h + 1) * per)).sum()) for h in range(attn.heads)]
            assert len(set(counts)) == 1 and 0 < counts[0] < per
            assert sum(counts) % 2 == 0  # round_to 2
            for other in ("to_k", "to_v"):
                assert (report.kept[path[:-4] + other]["out"] == roles["out"]).all()
            heads += attn.heads
    assert heads >= 2
    # the pruned U-Net samples with the pipeline (the class token through cross-attention)
    x, t = pruned.example_inputs()[:2]
    with torch.no_grad():
        out = pruned(x, t, encoder_hidden_states=data.encoder_hidden_states[:1])
    assert out.shape == x.shape and torch.isfinite(out).all()


def load_pipeline_unet_copy(pipe):
    """A copy of the pipeline's U-Net (the module fixture's pipeline stays dense for the other tests)."""
    import copy
    return copy.deepcopy(pipe.unet)
