"""Encoders with an MLM head (BERT, RoBERTa, ...): a mask token holds the answer's place."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForMaskedLM

from cuetune.errors import ModelError, TemplateError
from cuetune.families.family import Family

MASKED_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet",
                "deberta", "deberta-v2", "camembert", "modernbert"}


class Masked(Family):
    name = "masked"
    auto_class = AutoModelForMaskedLM
    pools_first_token = True  # encoders pool at [CLS], as their sequence classifiers do

    @classmethod
    def detect(cls, config) -> bool:
        return config.model_type in MASKED_TYPES

    def answer_token_id(self, tokenizer) -> int:
        if tokenizer.mask_token_id is None:
            raise TemplateError("this tokenizer has no mask token for {answer}")
        return tokenizer.mask_token_id

    def token_logits(self, model, hidden, token_ids):
        head = self._head(model)
        logits = head(hidden[:, None, :])[:, 0, :]  # [B, V]: one position per row only
        return (logits if token_ids is None else logits[:, token_ids]).float()

    def output_head(self, model):
        return self._head(model)

    @staticmethod
    def _head(model: nn.Module) -> nn.Module:
        heads = [m for n, m in model.named_children() if n != model.base_model_prefix]
        if len(heads) != 1:
            raise ModelError(
                f"{type(model).__name__}: cannot find a single MLM head beside the encoder"
            )
        return heads[0]

    def repair_missing_head(self, model, missing):
        """Encoders shipped without an MLM head (minilm-l6) get a deterministic fallback.

        The decoder stays tied to the word embeddings; the transform becomes the identity and
        the output bias zero, so a mask's score for a word is the dot product of its normalised
        hidden state with that word's embedding. Random init would make every load differ.
        """
        head_missing = [k for k in missing if not k.startswith(model.base_model_prefix + ".")]
        if not head_missing:
            return
        predictions = getattr(getattr(model, "cls", None), "predictions", None)
        if predictions is None:
            raise ModelError(
                f"{type(model).__name__}: checkpoint has no MLM head and no fallback is known "
                "for this architecture; use a checkpoint with an MLM head"
            )
        with torch.no_grad():
            dense = predictions.transform.dense
            dense.weight.copy_(torch.eye(dense.weight.size(0), dtype=dense.weight.dtype))
            dense.bias.zero_()
            predictions.transform.transform_act_fn = nn.Identity()
            predictions.transform.LayerNorm.weight.fill_(1.0)
            predictions.transform.LayerNorm.bias.zero_()
            predictions.bias.zero_()
            if getattr(predictions.decoder, "bias", None) is not None:
                predictions.decoder.bias.zero_()
        model.cuetune_head_fallback = True
