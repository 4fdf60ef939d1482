"""The CLIP dual encoder alone, as a retrieval model: global image feature (CLS token) and global
text feature (first end-of-text token), both projected to the joint space, as PFCVR retrieves.

Used where no PFCVR head exists yet: CLIP-style pretraining (pfcvr.pipeline.pretrain) and the zero-shot
evaluation of the pretrained backbone (pfcvr.pipeline.zero_shot). It has the retrieval interface of
:class:`pfcvr.model.pfcvr.PFCVR` that ``pfcvr.engine.evaluate.evaluate_retrieval`` uses, without
part queries (so part fusion never applies to it).
"""
from __future__ import annotations

import torch
from torch import nn

from pfcvr.model.backbone import CLIPBackbone, eot_positions


class GlobalEncoder(nn.Module):
    """``backbone``: a :class:`CLIPBackbone`; ``tokenizer``: its tokenizer (vocabulary sizes must
    agree). Attributes ``image_size``, ``grid_size``, ``tokenizer``. Evaluate it with
    ``eval.part_fusion`` 0 (it has no part branch).

    Raises ValueError when the tokenizer and the text encoder disagree on the vocabulary.
    """

    def __init__(self, backbone: CLIPBackbone, tokenizer):
        super().__init__()
        if tokenizer.vocab_size != backbone.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the text encoder "
                             f"embeds {backbone.vocab_size}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_size, self.grid_size = backbone.image_size, backbone.grid_size

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] (CLIP-normalised) -> global image features [B, D] (CLS token)."""
        return self.backbone.encode_image_tokens(images)[:, 0]

    def encode_text(self, caption_ids: torch.Tensor) -> torch.Tensor:
        """caption_ids [B, L] -> global text features [B, D] (first EOT token; not normalised)."""
        tokens = self.backbone.encode_text_tokens(caption_ids)
        rows = torch.arange(caption_ids.shape[0], device=caption_ids.device)
        return tokens[rows, eot_positions(caption_ids, self.tokenizer.eot_id)]
