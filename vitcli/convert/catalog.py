"""Recommended pretrained weights by short name: what they are, where they live, what is known.

Pure Python (no torch), so `vit models --pretrained` stays instant. Every ImageNet figure is a
published one with its source; where none could be checked, the figure is left empty rather
than guessed. Parameter counts are the image encoder's own (with its classifier head, where
the repository has one), from the source named in `params_source`.

Which to pick (README "Start from pretrained weights", docs/pretrained.md):
- photos of anything, few labels: DINOv2 (self-supervised; its frozen features are the
  strongest linear-probe features of this list);
- web-like photos, everyday concepts: CLIP or SigLIP (image-text pretraining);
- ImageNet-like objects, or when an ImageNet classifier is itself useful: the AugReg ViTs
  and DeiT (supervised, with their 1,000-class heads).
"""

from __future__ import annotations

from dataclasses import dataclass

DINOV2_README = "github.com/facebookresearch/dinov2 README (linear probe)"
DEIT_README = "github.com/facebookresearch/deit README"
TIMM_RESULTS = "timm results/results-imagenet.csv"
OPENCLIP_RESULTS = "open_clip docs/openclip_results.csv (zero-shot)"
SHAPES = "counted from the encoder's shapes (a SigLIP MAP head, a ViT's 1,000-class head)"


@dataclass(frozen=True)
class Pretrained:
    """One recommended set of weights."""

    name: str  # the short name `vit train --init` and `vit convert --from-hub` accept
    family: str
    hub_id: str  # a transformers repository, or a timm/ one
    image_size: int  # px, the resolution the weights were trained (or fine-tuned) at
    params_m: float  # millions of parameters
    params_source: str
    data: str  # what the weights were pretrained on
    licence: str
    imagenet: str = ""  # a published ImageNet-1k top-1 figure, e.g. "81.1 % linear probe"
    source: str = ""  # where that figure is published
    use: str = ""  # what it is good for, in a few words

    @property
    def is_timm(self) -> bool:
        return self.hub_id.startswith("timm/")

    @property
    def files(self) -> tuple[str, ...]:
        """The files `vit convert` needs from the repository."""
        if self.is_timm:
            return ("config.json", "model.safetensors")
        return ("config.json", "preprocessor_config.json", "model.safetensors")


CATALOG: dict[str, Pretrained] = {p.name: p for p in (
    Pretrained("dinov2-s", "DINOv2", "facebook/dinov2-small", 224, 21, DINOV2_README,
               "LVD-142M, no labels", "Apache-2.0", "81.1 % linear probe", DINOV2_README,
               "any photos; best frozen features"),
    Pretrained("dinov2-b", "DINOv2", "facebook/dinov2-base", 224, 86, DINOV2_README,
               "LVD-142M, no labels", "Apache-2.0", "84.5 % linear probe", DINOV2_README,
               "any photos; more accurate, 4x the cost"),
    Pretrained("dinov2-b-reg", "DINOv2+reg", "facebook/dinov2-with-registers-base",
               224, 86, DINOV2_README, "LVD-142M, no labels", "Apache-2.0",
               "84.6 % linear probe", DINOV2_README, "any photos; cleaner attention maps"),
    Pretrained("dinov2-s-timm", "DINOv2", "timm/vit_small_patch14_dinov2.lvd142m", 518, 21,
               DINOV2_README, "LVD-142M, no labels", "Apache-2.0", "81.1 % linear probe",
               DINOV2_README, "the same weights in timm's layout"),
    Pretrained("clip-b16", "CLIP", "openai/clip-vit-base-patch16", 224, 86, SHAPES,
               "WIT-400M image-text", "MIT", "68.3 % zero-shot", OPENCLIP_RESULTS,
               "web-like photos, everyday concepts"),
    Pretrained("clip-b16-in1k", "CLIP", "timm/vit_base_patch16_clip_224.openai_ft_in1k", 224,
               86.6, TIMM_RESULTS, "WIT-400M, then IN-1k", "Apache-2.0", "85.3 % top-1",
               TIMM_RESULTS, "CLIP fine-tuned to ImageNet's classes"),
    Pretrained("siglip-b16", "SigLIP", "google/siglip-base-patch16-224", 224, 93, SHAPES,
               "WebLI image-text", "Apache-2.0",
               "", "", "web-like photos, everyday concepts"),
    Pretrained("deit-s-distilled", "DeiT", "facebook/deit-small-distilled-patch16-224", 224, 22,
               DEIT_README, "IN-1k", "Apache-2.0", "81.2 % top-1", DEIT_README,
               "ImageNet-like objects, small and fast"),
    Pretrained("deit3-s", "DeiT III", "timm/deit3_small_patch16_224.fb_in22k_ft_in1k", 224,
               22.1, TIMM_RESULTS, "IN-21k, then IN-1k", "Apache-2.0", "83.1 % top-1",
               TIMM_RESULTS, "ImageNet-like objects, small"),
    Pretrained("vit-s16-augreg", "ViT (AugReg)", "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
               224, 22.1, TIMM_RESULTS, "IN-21k, then IN-1k", "Apache-2.0", "81.4 % top-1",
               TIMM_RESULTS, "ImageNet-like objects, small"),
    Pretrained("vit-b16-augreg", "ViT (AugReg)",
               "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", 224, 86.6, TIMM_RESULTS,
               "IN-21k, then IN-1k", "Apache-2.0", "85.1 % top-1", TIMM_RESULTS,
               "ImageNet-like objects, accurate"),
    Pretrained("vit-b16", "ViT", "google/vit-base-patch16-224", 224, 86.6, SHAPES,
               "IN-21k, then IN-1k", "Apache-2.0",
               "", "", "the original ViT-B/16 release"),
)}


def resolve(name_or_id: str) -> Pretrained | None:
    """The catalog entry for a short name or a Hub id in the table; None otherwise."""
    key = name_or_id.strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    for entry in CATALOG.values():
        if entry.hub_id.lower() == key:
            return entry
    return None


def hub_id_for(name_or_id: str) -> str:
    """The Hub repository for a short name; any other string is taken as a Hub id itself."""
    entry = resolve(name_or_id)
    return entry.hub_id if entry else name_or_id.strip()


def looks_like_hub_id(value: str) -> bool:
    """True for 'owner/name' (one slash, no spaces, no local-path markers) or a short name."""
    if resolve(value) is not None:
        return True
    parts = value.split("/")
    return (len(parts) == 2 and all(parts) and " " not in value
            and not value.startswith((".", "~")) and "\\" not in value
            and not value.endswith((".safetensors", ".npz", ".bin", ".pth", ".pt")))


def download_hint(repo_id: str) -> str:
    """How to fetch a repository's files by hand: the command, then the conversion."""
    entry = resolve(repo_id)
    timm_layout = entry.is_timm if entry else repo_id.startswith("timm/")
    files = ("config.json", "model.safetensors") if timm_layout else (
        "config.json", "preprocessor_config.json", "model.safetensors")
    folder = repo_id.split("/")[-1]
    return (f"on a machine with internet run `hf download {repo_id} {' '.join(files)} "
            f"--local-dir {folder}`, copy the folder here and run `vit convert {folder} "
            f"--out {folder}.safetensors`")
