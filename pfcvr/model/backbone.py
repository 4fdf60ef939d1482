"""CLIP dual encoder (docs/method.md §3.1) with our own forward over transformers' CLIP submodules.

We keep ``CLIPModel``'s vision tower, text tower and the two projections, but run the layers
ourselves because PFCVR needs what ``CLIPModel`` does not give:

* every token, after the final LayerNorm and the projection (the official encoders return
  ``ln_post``/``ln_final`` + projection of all tokens, not just the pooled one);
* a second vision pass over the *visible* patches only (MIM, §3.5): patch embedding and position
  embedding are added first, then the visible tokens are gathered, so each kept patch carries its
  own position;
* the class-token position quirk of the official code (§8.2.1, ``model.cls_pos_quirk``): CLS gets
  the position embedding of slot 1 instead of slot 0;
* the global text feature at the first end-of-text token found by its id (not argmax, since the
  added mask id is larger than EOT in a real CLIP vocabulary).

Attention is PyTorch's fused ``scaled_dot_product_attention`` (causal for text, as in CLIP).
Everything works under bf16 autocast.

``build_clip``: ``model.backbone: tiny`` builds a randomly initialised ``CLIPModel`` from
``model.tiny.*``; ``pretrained`` loads the pretrain stage's folder (``models/pretrained``, the
tiny CLIP after CLIP-style pretraining, pfcvr.pipeline.pretrain); any other value is a
transformers id or local folder loaded with ``from_pretrained``; its vision position grid is bilinearly resized to ``model.image_size`` and
its text token embeddings grow to the tokenizer's vocabulary (the added ``<|mask|>``).

The vision tower of ``tiny`` and ``pretrained`` has either CLIP's patchify (one P x P convolution,
``model.tiny.stem: patch``) or a convolutional stem (``conv``, :class:`ConvStem`) producing the
same token grid; the choice is stored in the vision config as ``pfcvr_stem`` so a saved model
rebuilds it offline. A real CLIP checkpoint keeps its patchify.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*d] -> [B, H, T, d]."""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, d] -> [B, T, H*d]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def clip_layer(layer: nn.Module, x: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """One pre-LN CLIP encoder layer (transformers ``CLIPEncoderLayer``) with fused attention.

    x: [B, T, W] -> [B, T, W].
    """
    attn = layer.self_attn
    h = layer.layer_norm1(x)
    # q, k, v in one matrix product (one pass over h; measured faster than three on CPU). The
    # weights stay transformers' three Linear layers, so checkpoints load unchanged.
    w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
    q, k, v = (_split_heads(t, heads) for t in F.linear(h, w, b).chunk(3, dim=-1))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    x = x + attn.out_proj(_merge_heads(a))
    return x + layer.mlp(layer.layer_norm2(x))


class CLIPBackbone(nn.Module):
    """Vision + text towers of a transformers ``CLIPModel`` and their projections.

    Attributes: ``embed_dim`` (D, joint space), ``patch_size`` (P), ``grid_size`` (G),
    ``image_size`` (G*P), ``context_length`` (L).
    """

    def __init__(self, clip: nn.Module, cls_pos_quirk: bool = False):
        super().__init__()
        cfg = clip.config
        self.vision = clip.vision_model
        self.text = clip.text_model
        self.visual_projection = clip.visual_projection
        self.text_projection = clip.text_projection
        self.clip_config = cfg.to_dict()          # rebuilds the architecture offline (model/io.py)
        self.cls_pos_quirk = bool(cls_pos_quirk)
        self.vision_heads = cfg.vision_config.num_attention_heads
        self.text_heads = cfg.text_config.num_attention_heads
        self.embed_dim = cfg.projection_dim
        self.patch_size = cfg.vision_config.patch_size
        self.image_size = cfg.vision_config.image_size
        self.grid_size = self.image_size // self.patch_size
        self.context_length = cfg.text_config.max_position_embeddings
        self.vocab_size = cfg.text_config.vocab_size

    # ------------------------------------------------------------------------------ vision
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> patch tokens with their position embeddings [B, G*G, Wv]."""
        emb = self.vision.embeddings
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images of size {tuple(images.shape[-2:])} given to a backbone built "
                             f"for {self.image_size}x{self.image_size} (model.image_size)")
        x = emb.patch_embedding(images.to(next(emb.patch_embedding.parameters()).dtype))
        x = x.flatten(2).transpose(1, 2)
        return x + emb.position_embedding.weight[1:]

    def vision_tokens(self, patches: torch.Tensor,
                      keep: torch.Tensor | None = None) -> torch.Tensor:
        """Run the ViT on CLS + patch tokens.

        patches: [B, N, Wv] from :meth:`embed_patches`; keep: optional LongTensor [B, K] of the
        visible patch indices (MIM pass). Returns projected tokens [B, 1+N (or 1+K), D]; index 0
        is the class token.
        """
        emb = self.vision.embeddings
        if keep is not None:
            patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        cls = emb.class_embedding + emb.position_embedding.weight[1 if self.cls_pos_quirk else 0]
        x = torch.cat([cls.to(patches.dtype).expand(patches.shape[0], 1, -1), patches], dim=1)
        x = self.vision.pre_layrnorm(x)
        for layer in self.vision.encoder.layers:
            x = clip_layer(layer, x, self.vision_heads, causal=False)
        return self.visual_projection(self.vision.post_layernorm(x))

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> all projected tokens [B, 1+G*G, D] (CLS first)."""
        return self.vision_tokens(self.embed_patches(images))

    # ------------------------------------------------------------------------------ text
    def encode_text_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """token ids [B, L] -> all projected tokens [B, L, D] (causal attention, as CLIP)."""
        if ids.shape[1] > self.context_length:
            raise ValueError(f"captions of {ids.shape[1]} tokens exceed the text encoder's "
                             f"{self.context_length} positions")
        emb = self.text.embeddings
        x = emb.token_embedding(ids) + emb.position_embedding.weight[: ids.shape[1]]
        for layer in self.text.encoder.layers:
            x = clip_layer(layer, x, self.text_heads, causal=True)
        return self.text_projection(self.text.final_layer_norm(x))


def eot_positions(ids: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Index of the first end-of-text token in each row of ids [B, L] -> [B]."""
    return (ids == eot_id).int().argmax(dim=1)


# ---------------------------------------------------------------------------------- stem
STEM_KEY = "pfcvr_stem"          # vision-config attribute naming the stem (absent: patchify)
STEM_CHANNELS = (16, 32)         # widths of the first two stem convolutions


class ConvStem(nn.Sequential):
    """Early convolutions in place of the patchify (the hybrid ViT of Dosovitskiy et al. 2021;
    Xiao et al. 2021, "Early convolutions help transformers see better").

    Three convolutions whose kernel equals their stride: 3 -> 16 channels (2x2, stride 2), ReLU,
    16 -> 32 (2x2, stride 2), ReLU, 32 -> ``width`` (P/4 x P/4, stride P/4). Kernel = stride keeps
    each token's receptive field inside its own P x P patch, as the patchify does, so masked image
    recovery cannot read a masked patch's border through a visible neighbour. No normalisation
    (measured: BatchNorm did not help at this size and couples the samples of a batch).

    images [B, 3, H, W] -> [B, width, H/P, W/P] (the patchify's output shape). Raises ValueError
    when P is not a multiple of 4.
    """

    def __init__(self, width: int, patch_size: int):
        if patch_size % 4:
            raise ValueError(f"model.tiny.stem=conv needs model.patch_size divisible by 4 (two "
                             f"2x2 stride-2 convolutions before the last); got {patch_size}")
        c1, c2 = STEM_CHANNELS
        k = patch_size // 4
        super().__init__(nn.Conv2d(3, c1, 2, stride=2), nn.ReLU(),
                         nn.Conv2d(c1, c2, 2, stride=2), nn.ReLU(),
                         nn.Conv2d(c2, width, k, stride=k))

    @property
    def weight(self) -> torch.Tensor:
        """The last convolution's weight: transformers' ``CLIPVisionEmbeddings.forward`` reads
        ``patch_embedding.weight.dtype``, so its own forward runs unchanged with the stem."""
        return self[-1].weight


def install_stem(model: nn.Module) -> nn.Module:
    """Replace the patchify of a transformers ``CLIPModel`` or ``CLIPVisionModel`` (in place) by
    :class:`ConvStem` when its vision config says ``pfcvr_stem: conv``; returns ``model``. New
    weights are drawn from torch's global RNG (after the rest of the model's)."""
    cfg = model.config
    vcfg = getattr(cfg, "vision_config", cfg)
    stem = getattr(vcfg, STEM_KEY, "patch")
    if stem == "conv":
        # CLIPModel holds the tower as .vision_model; CLIPVisionModel is the tower itself
        tower = getattr(model, "vision_model", model)
        tower.embeddings.patch_embedding = ConvStem(vcfg.hidden_size, vcfg.patch_size)
    elif stem != "patch":
        raise ValueError(f"vision config {STEM_KEY}={stem!r}: expected 'conv' or 'patch'")
    return model


def has_conv_stem(config) -> bool:
    """True when a ``CLIPConfig`` asks for :class:`ConvStem` (a pfcvr tiny/pretrained backbone)."""
    return getattr(config.vision_config, STEM_KEY, "patch") == "conv"


# ---------------------------------------------------------------------------------- building
def tiny_vision_config(model_cfg) -> dict:
    """The vision tower of ``model.tiny.*`` at ``model.image_size/patch_size/embed_dim``, as
    ``CLIPVisionConfig`` keyword arguments (also what benchmarks/learnability.py probes).
    Raises ValueError when the image side is not a multiple of the patch or a width is not
    divisible by its heads."""
    t = model_cfg.tiny
    image_size, patch = model_cfg.image_size, model_cfg.patch_size
    if image_size % patch:
        raise ValueError(f"model.image_size={image_size} is not a multiple of "
                         f"model.patch_size={patch}")
    for width, heads, name in ((t.vision_width, t.vision_heads, "vision"),
                               (t.text_width, t.text_heads, "text")):
        if width % heads:
            raise ValueError(f"model.tiny.{name}_width={width} is not divisible by "
                             f"model.tiny.{name}_heads={heads}")
    if t.stem == "conv" and patch % 4:
        raise ValueError(f"model.tiny.stem=conv needs model.patch_size divisible by 4; got {patch}"
                         f" (set model.tiny.stem: patch, or a patch size such as 8, 12 or 16)")
    return dict(hidden_size=t.vision_width, intermediate_size=4 * t.vision_width,
                num_hidden_layers=t.vision_layers, num_attention_heads=t.vision_heads,
                image_size=image_size, patch_size=patch, hidden_act="quick_gelu",
                projection_dim=model_cfg.embed_dim, **{STEM_KEY: t.stem})


def tiny_clip_config(model_cfg, tokenizer):
    """A ``CLIPConfig`` from ``model.tiny.*``, ``model.image_size/patch_size/embed_dim`` and the
    tokenizer's vocabulary and special ids."""
    from transformers import CLIPConfig

    t = model_cfg.tiny
    vision = tiny_vision_config(model_cfg)
    text = dict(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                bos_token_id=tokenizer.sot_id, eos_token_id=tokenizer.eot_id,
                hidden_size=t.text_width, intermediate_size=4 * t.text_width,
                num_hidden_layers=t.text_layers, num_attention_heads=t.text_heads,
                max_position_embeddings=t.context_length, hidden_act="quick_gelu",
                projection_dim=model_cfg.embed_dim)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=model_cfg.embed_dim)


def resize_position_grid(clip: nn.Module, image_size: int) -> None:
    """Bilinearly resize a CLIP's patch position grid to ``image_size`` (CLS slot kept), in place.

    E.g. ViT-B/16 at 224 (14x14) -> 384 (24x24), as the official code does (§3.1).
    """
    vcfg = clip.config.vision_config
    patch = vcfg.patch_size
    if image_size % patch:
        raise ValueError(f"model.image_size={image_size} is not a multiple of the checkpoint's "
                         f"patch size {patch}")
    emb = clip.vision_model.embeddings
    old = emb.position_embedding.weight.data
    n_old = old.shape[0] - 1
    g_old, g_new = int(math.isqrt(n_old)), image_size // patch
    if g_old * g_old != n_old:
        raise ValueError(f"checkpoint position embedding has {n_old} patch slots, not a square "
                         f"grid")
    if g_new != g_old:
        grid = old[1:].reshape(1, g_old, g_old, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(g_new, g_new), mode="bilinear", align_corners=False)
        new = torch.cat([old[:1].float(), grid.permute(0, 2, 3, 1).reshape(g_new * g_new, -1)])
        emb.position_embedding = nn.Embedding(new.shape[0], new.shape[1]).to(old.device)
        emb.position_embedding.weight.data.copy_(new.to(old.dtype))
        emb.num_patches = g_new * g_new
        emb.num_positions = g_new * g_new + 1
        emb.register_buffer("position_ids", torch.arange(emb.num_positions).unsqueeze(0),
                            persistent=False)
    emb.image_size = image_size
    vcfg.image_size = image_size
    clip.vision_model.config.image_size = image_size


def grow_vocabulary(clip: nn.Module, vocab_size: int) -> None:
    """Give the text tower ``vocab_size`` token embeddings (new rows, e.g. ``<|mask|>``, drawn
    like CLIP's: N(0, 0.02))."""
    emb = clip.text_model.embeddings.token_embedding
    old = emb.weight.data
    if vocab_size < old.shape[0]:
        raise ValueError(f"tokenizer vocabulary ({vocab_size}) is smaller than the checkpoint's "
                         f"({old.shape[0]})")
    if vocab_size > old.shape[0]:
        new = nn.Embedding(vocab_size, old.shape[1]).to(device=old.device, dtype=old.dtype)
        nn.init.normal_(new.weight, std=0.02)
        new.weight.data[: old.shape[0]] = old
        clip.text_model.embeddings.token_embedding = new
    clip.config.text_config.vocab_size = vocab_size
    clip.text_model.config.vocab_size = vocab_size


PRETRAINED = "pretrained"


def backbone_source(name: str) -> str:
    """What ``model.backbone`` names, as a loadable source: ``tiny`` stays ``tiny``;
    ``pretrained`` is the pretrain stage's folder (``pfcvr.paths.PRETRAINED``, relative to the
    repository root where DVC runs the stages); anything else is a transformers id or folder.

    Raises OSError when ``pretrained`` is named but the pretrain stage has not run, and
    IncompleteOutputs (a ValueError) while its output set is half-published.
    """
    if name != PRETRAINED:
        return name
    from pfcvr.paths import PRETRAINED as folder
    from pfcvr.runtime.output_set import require_whole

    require_whole(folder, "pretrain")   # a killed publication: weights and stats may differ
    if not (folder / "config.json").is_file():
        raise OSError(f"model.backbone=pretrained: {folder}/ holds no pretrained backbone; run the "
                      f"pretrain stage first (`dvc repro pretrain`), or set model.backbone: tiny")
    return str(folder)


def checkpoint_location(name: str) -> bool:
    """True when ``model.backbone`` names a local folder (loaded with ``local_files_only``);
    a local folder must hold a transformers ``config.json``."""
    local = Path(name).is_dir()
    if local and not (Path(name) / "config.json").is_file():
        raise OSError(f"model.backbone={name!r}: the folder holds no config.json (expected a "
                      f"transformers CLIP checkpoint saved with save_pretrained)")
    return local


def build_clip(model_cfg, tokenizer) -> nn.Module:
    """A ``CLIPModel``: tiny and random (``model.backbone: tiny``) or loaded from a checkpoint."""
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    name = backbone_source(model_cfg.backbone)
    if name == "tiny":
        return install_stem(CLIPModel(tiny_clip_config(model_cfg, tokenizer)))
    local = checkpoint_location(name)
    hf_logging.disable_progress_bar()
    try:
        clip = (_load_conv_stem_clip(Path(name)) if local and _folder_has_conv_stem(Path(name))
                else CLIPModel.from_pretrained(name, local_files_only=local))
    except OSError as err:
        raise OSError(f"model.backbone={name!r}: cannot load a CLIP checkpoint "
                      f"({'local folder' if local else 'hub id; needs network or a cached copy'})"
                      f": {err}") from None
    clip = clip.float()
    resize_position_grid(clip, model_cfg.image_size)
    grow_vocabulary(clip, tokenizer.vocab_size)
    return clip


def clip_from_config(config: dict) -> nn.Module:
    """Rebuild a (randomly initialised) ``CLIPModel``, stem included, from a saved ``CLIPConfig``
    dict."""
    from transformers import CLIPConfig, CLIPModel

    return install_stem(CLIPModel(CLIPConfig.from_dict(config)))


def _folder_has_conv_stem(folder: Path) -> bool:
    """True when a local checkpoint's config.json names the conv stem (the pretrain stage's)."""
    import json

    return json.loads((folder / "config.json").read_text()).get("vision_config", {}).get(
        STEM_KEY) == "conv"


def _load_conv_stem_clip(folder: Path) -> nn.Module:
    """A ``save_pretrained`` folder of a conv-stem CLIP: transformers would build a patchify and
    drop the stem's weights, so rebuild the architecture and load the weights strictly."""
    import json

    from safetensors.torch import load_file

    clip = clip_from_config(json.loads((folder / "config.json").read_text()))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise OSError(f"{weights}: missing")
    clip.load_state_dict(load_file(str(weights)), strict=True)
    return clip
