"""The PFCVR module: CLIP dual encoder + part alignment + bi-directional mask recovery.

Retrieval uses only the global features (:meth:`PFCVR.encode_text`, :meth:`PFCVR.encode_image`,
docs/method.md §3.8). Training (:meth:`PFCVR.forward`) returns the *unweighted* losses of §4 as a
:class:`PFCVROutput`, for the branches named in ``terms``; a branch not asked for is skipped
entirely (no compute, its parameters get no gradient). The weights live in
:class:`pfcvr.losses.Criterion`, which also says which branches to run.

One training step (§5, our order):
1. clean image -> all image tokens [B, 1+N, D] (patch embedding kept for step 5);
   one text pass over the clean captions, the corrupted captions (step 4) and the 6 part
   prompts (step 3) -> all text tokens; globals = CLS and caption EOT features;
2. SDM on the globals (§4.1); ID on the globals with the shared classifier (§4.2);
3. part: the 6 part prompts encoded once, visual part features pooled from the patch tokens,
   queries decoded for the whole batch, part loss on [B, 6, 6] (§3.3, §4.4);
4. MLM: captions corrupted here, encoded, recovered through cross-attention to the image tokens
   of step 1 (§3.4, §4.3);
5. MIM: exactly round(mask_ratio * N) patches removed (part-guided or random), a second vision
   pass over the visible patches only, decoded with cross-attention to the caption tokens of
   step 1, pixel MSE on the removed patches (§3.5, §4.5);
6. the total loss is the weighted sum, applied outside the model by
   :class:`pfcvr.losses.Criterion` (each weight once).

Random draws happen in code order: the MLM caption corruption, the dropout of the part and MLM
decoders, then the MIM patch mask. Keep that order when editing: a seed then reproduces earlier
runs bit for bit.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

from pfcvr import losses
from pfcvr.config import to_dict
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.model.backbone import CLIPBackbone, eot_positions
from pfcvr.model.masking import corrupt_captions, ordinary_ids, patch_mask
from pfcvr.model.part_alignment import PartAlignment
from pfcvr.model.recovery import ImageRecovery, TextRecovery

PART_PROMPT = "car {}"          # official: "Car <part>" (the tokenizer lower-cases)
ALL_TERMS = frozenset(losses.TERMS)


@dataclass
class PFCVROutput:
    """The unweighted training losses of one batch (docs/method.md §4), as ``PFCVR.forward``
    returns them.

    Each loss is a scalar fp32 tensor of shape [] (batch mean, attached to the graph), or None when
    its branch did not run (not in ``terms``):

    - ``sdm``: similarity distribution matching, image->text + text->image KL (§4.1);
    - ``id``: identity classification, mean of the image and text cross-entropies (§4.2);
    - ``mlm``: masked language recovery, cross-entropy at the corrupted positions (§4.3);
    - ``mim``: masked image recovery, pixel MSE at the removed patches (§4.5);
    - ``part``: part-level alignment, sigmoid BCE on [B, 6, 6] part similarities (§4.4);
    - ``mlm_acc``: diagnostic, not a loss: fraction [] of corrupted positions whose original
      token is the MLM argmax (detached; None without the MLM branch).

    :meth:`terms` gives the present losses by name; ``Criterion(weights)(output)`` the total.
    """

    sdm: torch.Tensor | None = None
    id: torch.Tensor | None = None
    mlm: torch.Tensor | None = None
    mim: torch.Tensor | None = None
    part: torch.Tensor | None = None
    mlm_acc: torch.Tensor | None = None

    def terms(self) -> dict[str, torch.Tensor]:
        """The losses that were computed, {name: scalar tensor []}, in ``pfcvr.losses.TERMS``
        order (``mlm_acc`` is not a loss and is not included)."""
        return {name: value for name in losses.TERMS
                if (value := getattr(self, name)) is not None}


# A pytree node (as transformers registers its ModelOutput), so that DDP with
# find_unused_parameters routes each tensor of the output through its unused-output sink.
pytree.register_dataclass(PFCVROutput)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """images [B, 3, G*P, G*P] -> [B, G*G, P*P*3], row-major patches, each (row, col, RGB)."""
    b, c, h, w = images.shape
    g, gw = h // patch, w // patch
    x = images.reshape(b, c, g, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, g * gw, patch * patch * c)


class PFCVR(nn.Module):
    """PFCVR model. Build it with :func:`pfcvr.model.build_model`.

    Attributes: ``tokenizer``, ``grid_size`` (G), ``image_size``, ``embed_dim`` (D),
    ``num_classes``, ``scale`` (1 / model.temperature), ``config`` (the model params as a dict).
    """

    # Modules trained at train.lr * train.lr_new_modules (official: names containing "cross",
    # "classifier" or "mlm_head", i.e. the whole MLM branch and the ID classifier).
    NEW_MODULES = ("mlm", "classifier")

    def __init__(self, model_cfg, backbone: CLIPBackbone, tokenizer, num_classes: int):
        super().__init__()
        if tokenizer.vocab_size != backbone.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the text encoder "
                             f"embeds {backbone.vocab_size}")
        if tokenizer.context_length > backbone.context_length:
            raise ValueError(f"tokenizer context length {tokenizer.context_length} exceeds the "
                             f"text encoder's {backbone.context_length} positions")
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes}: must be >= 0")
        self.config = to_dict(model_cfg)
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.scale = 1.0 / model_cfg.temperature
        self.part_context = model_cfg.part_context
        d, g, p = backbone.embed_dim, backbone.grid_size, backbone.patch_size
        for key, heads in (("part_decoder", model_cfg.part_decoder.heads),
                           ("mlm_decoder", model_cfg.mlm_decoder.heads)):
            if d % heads:
                raise ValueError(f"model.{key}.heads={heads} does not divide the joint width {d} "
                                 f"(model.embed_dim, or the checkpoint's projection_dim)")
        self.embed_dim, self.grid_size, self.image_size = d, g, backbone.image_size
        self.classifier = nn.Linear(d, num_classes) if num_classes > 0 else None
        if self.classifier is not None:               # §3.2: N(0, 0.001^2), bias 0
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self.part = PartAlignment(d, len(PART_CATEGORIES), g * g, model_cfg.part_decoder)
        self.mlm = TextRecovery(d, tokenizer.vocab_size, model_cfg.mlm_decoder)
        self.mim = ImageRecovery(d, g * g, p * p * 3, model_cfg.mim_decoder)
        prompts = tokenizer([PART_PROMPT.format(c) for c in PART_CATEGORIES])
        self.register_buffer("part_prompt_ids", prompts, persistent=False)
        self.register_buffer("special_ids", torch.tensor(tokenizer.special_ids), persistent=False)
        self.register_buffer("ordinary_ids", ordinary_ids(tokenizer.vocab_size,
                                                          tokenizer.special_ids), persistent=False)

    # ------------------------------------------------------------------------------ retrieval
    def _text_global(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(ids.shape[0], device=ids.device)
        return tokens[rows, eot_positions(ids, self.tokenizer.eot_id)]

    def encode_text(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """caption_ids [B, L] -> global text features [B, D] (EOT token; not normalised)."""
        return self._text_global(caption_ids, self.backbone.encode_text_tokens(caption_ids))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (CLIP-normalised) -> global image features [B, D] (CLS token)."""
        return self.backbone.encode_image_tokens(images)[:, 0]

    # ------------------------------------------------------------------------------ parts
    def part_prompt_features(self) -> torch.Tensor:
        """Text features of the 6 part prompts [6, D]: mean over all L output positions
        (padding included, as the official code), one [6, L] text pass shared by the batch."""
        return self.backbone.encode_text_tokens(self.part_prompt_ids).mean(dim=1)

    def text_part_queries(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """caption_ids [B, L] -> decoded part queries [B, 6, D] with caption context (all six
        context tokens visible). For optional part-score fusion at evaluation."""
        if self.part_context != "caption":
            raise ValueError("text_part_queries needs model.part_context=caption: with the image "
                             "context the queries depend on the gallery image")
        context = self.encode_text(caption_ids).unsqueeze(1) + self.part_prompt_features()
        return self.part.decode(context)

    def image_part_features(self, images: torch.Tensor, part_masks: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W], part_masks bool [B, 6, G*G] -> visual part features [B, 6, D]."""
        tokens = self.backbone.encode_image_tokens(images)
        return self.part.visual_parts(tokens[:, 1:], part_masks)

    def new_module_parameters(self) -> list[nn.Parameter]:
        """Parameters of the modules the official recipe trains at a higher lr (MLM, ID)."""
        return [p for name in self.NEW_MODULES if getattr(self, name) is not None
                for p in getattr(self, name).parameters()]

    # ------------------------------------------------------------------------------ training
    def static_batch(self, batch: dict) -> dict:
        """``batch`` with ``caption_ids`` padded to the tokenizer's context length [B, L_ctx],
        the width the training collate gives already. One input shape for every batch, so that a
        compiled step (``train.compile``) is not recompiled for a batch trimmed to its longest
        caption. The maths is that of the full-width batch: the caption tokens are unchanged
        (causal text encoder), and MIM's cross-attention sees the padding positions as usual."""
        ids, width = batch["caption_ids"], self.tokenizer.context_length
        if ids.shape[1] >= width:
            return batch
        return {**batch, "caption_ids": F.pad(ids, (0, width - ids.shape[1]),
                                              value=self.tokenizer.pad_id)}

    def forward(self, batch: dict, *, terms: Collection[str] = ALL_TERMS, mask_ratio: float,
                text_mask_ratio: float, mim_mask: str, static_shapes: bool = False
                ) -> PFCVROutput:
        """The unweighted training losses of one batch (see the module docstring for the order).

        batch: the training batch dict (``images`` [B,3,H,W] CLIP-normalised, ``caption_ids``
        [B,L], ``pids`` [B] in 0..C-1, ``part_masks`` bool [B,6,G*G], ``part_present`` bool
        [B,6]); terms: the branches to run, a subset of ``sdm, id, mlm, mim, part`` (normally
        ``Criterion(train.weights).terms``: those with a weight > 0); mask_ratio: fraction of
        patches removed for MIM (exactly round(mask_ratio * G*G), §3.5, official 0.75);
        text_mask_ratio: fraction of caption tokens corrupted for MLM (§3.4, BERT's 0.15);
        mim_mask: ``part`` (part regions removed first) | ``random``; static_shapes: no tensor
        whose shape depends on the data (for ``torch.compile`` without graph breaks and CUDA
        graphs, ``train.compile``; see also :meth:`static_batch`): the MLM head runs at every
        caption position and its cross-entropy ignores the unselected ones, so ``mlm`` is still
        the mean over exactly the
        corrupted positions (same value up to float summation order, at the cost of the head's
        FLOPs at L instead of ~0.15 L positions per caption). False (eager default): the head
        runs at the corrupted positions only, gathered by boolean indexing.

        Returns a :class:`PFCVROutput` with the terms asked for (the others None) and ``mlm_acc``
        when MLM ran. Raises ValueError for an empty or unknown ``terms``, ``id`` without an
        identity classifier (num_classes=0), an unknown ``mim_mask``, or a ``mask_ratio`` that
        removes no patch.
        """
        terms = frozenset(terms)
        if not terms or not terms <= ALL_TERMS:
            raise ValueError(f"terms={sorted(terms)}: must be a non-empty subset of "
                             f"{', '.join(losses.TERMS)}")
        if "id" in terms and self.classifier is None:
            raise ValueError("loss term 'id' asked for (train.weights.id > 0) but the model was "
                             "built with num_classes=0 (no identity classifier)")
        images, ids, pids = batch["images"], batch["caption_ids"], batch["pids"]
        patches = self.backbone.embed_patches(images)
        img_tokens = self.backbone.vision_tokens(patches)
        # One text pass for the clean captions, the corrupted captions (MLM) and the 6 part
        # prompts: the text encoder treats rows independently, so this is the same maths as
        # separate passes, with fewer, larger matrix products (and 2 passes fewer to launch).
        texts = [ids]
        if "mlm" in terms:
            corrupted, selected = corrupt_captions(
                ids, text_mask_ratio, mask_id=self.tokenizer.mask_id, special_ids=self.special_ids,
                ordinary=self.ordinary_ids)
            texts.append(corrupted)
        if "part" in terms:
            texts.append(self.part_prompt_ids)
        if len({t.shape[1] for t in texts}) == 1:
            rows = self.backbone.encode_text_tokens(torch.cat(texts)).split(
                [t.shape[0] for t in texts])
        else:                                   # captions not at the tokenizer's length
            rows = [self.backbone.encode_text_tokens(t) for t in texts]
        txt_tokens = rows[0]
        img_g, txt_g = img_tokens[:, 0], self._text_global(ids, txt_tokens)
        out = PFCVROutput()
        if "sdm" in terms:
            out.sdm = losses.sdm_loss(img_g, txt_g, pids, self.scale)
        if "id" in terms:
            logits_i, logits_t = self.classifier(torch.cat([img_g, txt_g])).chunk(2)
            out.id = losses.id_loss(logits_i, logits_t, pids)
        if "part" in terms:
            masks, present = batch["part_masks"], batch["part_present"]
            visual = self.part.visual_parts(img_tokens[:, 1:], masks)
            glob = txt_g if self.part_context == "caption" else img_g
            context = glob.unsqueeze(1) + rows[-1].mean(dim=1).to(glob.dtype)
            queries = self.part.decode(context, present)
            out.part = losses.part_loss(visual, queries, present, self.scale)
        if "mlm" in terms:
            if static_shapes:                   # [B*L, V] logits, unselected targets ignored
                logits = self.mlm(rows[1], img_tokens, None).flatten(0, 1)
                targets = torch.where(selected, ids, losses.IGNORE_INDEX).flatten()
                out.mlm = losses.mlm_loss(logits, targets)
                hits = (logits.argmax(-1) == targets).sum()     # ignored targets never match
                out.mlm_acc = (hits / selected.sum()).detach()
            else:                               # [M, V] at the M selected positions
                logits = self.mlm(rows[1], img_tokens, selected)
                targets = ids[selected]
                out.mlm = losses.mlm_loss(logits, targets)
                out.mlm_acc = (logits.argmax(-1) == targets).float().mean().detach()
        if "mim" in terms:
            out.mim = self._mim_loss(images, patches, txt_tokens, batch, mask_ratio, mim_mask)
        return out

    def _mim_loss(self, images, patches, txt_tokens, batch, mask_ratio, mim_mask):
        b, n = patches.shape[:2]
        if mim_mask == "part":
            prior = batch["part_masks"].any(dim=1)            # union of the part regions
        elif mim_mask == "random":
            prior = None
        else:
            raise ValueError(f"train.mim_mask={mim_mask!r}: must be part or random")
        keep, removed, _ = patch_mask(b, n, mask_ratio, prior, device=patches.device)
        if removed.shape[1] == 0:
            raise ValueError(f"train.mask_ratio={mask_ratio} removes no patch of {n}; raise it or "
                             f"set train.weights.mim=0")
        visible = self.backbone.vision_tokens(patches, keep)
        pred = self.mim(visible, keep, removed, txt_tokens)
        target = patchify(images, self.backbone.patch_size)
        target = target.gather(1, removed.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        return losses.mim_loss(pred, target)
