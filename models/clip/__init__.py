"""CLIP (Radford et al. 2021): the text encoders of Stable Diffusion, the vision tower, the BPE tokenizer.

Names, configs and semantics are transformers' (CLIPTextModel, CLIPTextModelWithProjection,
CLIPVisionModelWithProjection, CLIPModel), so the hub's files load as they are (``models.clip.load``).
"""
from models.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from models.clip.text import CLIPTextModel, CLIPTextModelWithProjection, CLIPTextOutput
from models.clip.vision import CLIPModel, CLIPVisionModelWithProjection

__all__ = ["CLIPConfig", "CLIPTextConfig", "CLIPVisionConfig", "CLIPTextModel", "CLIPTextModelWithProjection",
           "CLIPTextOutput", "CLIPVisionModelWithProjection", "CLIPModel"]
