"""Make tests/data/reference/vq_model_tiny.pt: known answers of diffusers' VQModel (the CompVis LDMs' autoencoder).

NEEDS THE REFERENCE ENVIRONMENT (diffusers installed), never the project's: run it as
    /path/to/refenv/bin/python -m benchmarks.make_vq_reference
It writes a RECIPE, not weights: tensor i (from 0) of the state dict, in diffusers' order, is
z = randn(shape, generator=manual_seed(RECIPE_SEED + i)), used as 1 + 0.2 z for normalisation weights (the
second-to-last name part contains "norm") and 0.1 z otherwise (tests/golden_recipe.py's rule). Stored: the
config dict, keys, shapes, recipe_seed, an image ``x`` (2,3,16,16) in [-1, 1], its encoding ``z`` and the
decoding ``decoded`` of ``z`` (quantised first, as VQModel.decode does), eval mode, float32.
"""
from __future__ import annotations

from pathlib import Path

import torch

RECIPE_SEED = 500
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "reference" / "vq_model_tiny.pt"


def main() -> None:
    from diffusers import VQModel  # the reference implementation: only in the reference environment

    model = VQModel(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=3,
                    num_vq_embeddings=64, norm_num_groups=8, sample_size=16).eval()
    state = model.state_dict()
    keys = [k for k, v in state.items() if v.is_floating_point()]
    recipe = {}
    for i, name in enumerate(keys):
        z = torch.randn(tuple(state[name].shape), generator=torch.Generator().manual_seed(RECIPE_SEED + i))
        parts = name.split(".")
        is_norm = parts[-1] == "weight" and "norm" in parts[-2]
        recipe[name] = 1 + 0.2 * z if is_norm else 0.1 * z
    model.load_state_dict(recipe)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).latents
        decoded = model.decode(z).sample
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}
    config["_class_name"] = "VQModel"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "keys": keys, "shapes": {k: list(state[k].shape) for k in keys},
                "recipe_seed": RECIPE_SEED, "x": x, "z": z, "decoded": decoded}, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
