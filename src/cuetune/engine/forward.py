"""The prompt model: a frozen base, a method's hooks, and label logits at the answer only.

`PromptModel.forward` is the one forward pass every method shares, inside the method's
`applied()` context (its weight changes, if any, are in force only there):
token ids -> input embeddings -> method.prepare_inputs -> family.run (hidden state at the
answer position only) -> method.scores (by default: logits of the label-word tokens only ->
verbalizer -> label scores).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from cuetune.families.inputs import ModelInputs
from cuetune.families.pretrained import LoadedModel
from cuetune.prompt.verbalizers import Verbalizer


class PromptModel(nn.Module):
    def __init__(self, loaded: LoadedModel, method, verbalizer: Verbalizer | None, shared_len: int = 0):
        super().__init__()
        self.base = loaded.model
        self.method = method
        self.family = loaded.family
        self.verbalizer = verbalizer
        """None for generation: the answer is text, read from the whole vocabulary."""
        use = verbalizer is not None and method.uses_verbalizer
        ids = verbalizer.token_ids if use else torch.zeros(0, dtype=torch.long)
        self.register_buffer("token_ids", ids.clone(), persistent=False)
        self.shared_len = shared_len if self.family.shares_prefix else 0
        self.memo: dict | None = None
        """Set by `reuse_shared`: the shared prompt's keys and values, kept across batches."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """batch tensors [B, T] -> label scores [B, L] (fp32); a teacher-forced generation
        batch (with "target") -> `target_logits`. One forward, so a distributed wrapper sees
        every training call."""
        with self.method.applied():
            if "target" in batch:
                return self.target_logits(batch)
            if self.chain:
                return self.chain_scores(batch)
            hidden = self.family.run(self.base, self.inputs(batch))  # [B, H]
            return self.method.scores(hidden, self).float()

    @property
    def chain(self) -> bool:
        return (self.verbalizer is not None and self.verbalizer.multi_token == "chain"
                and self.method.uses_verbalizer)

    def chain_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Label scores [B, L] by the chain rule: log P(word | x) = sum_i log P(t_i | x, t_<i)
        over the whole vocabulary (the family's `word_logprobs`; a causal model runs the prompt
        once for all words), then log-sum-exp over a label's words."""
        with self.method.applied():
            per_word = self.family.word_logprobs(self, batch, self.verbalizer.word_ids)  # [B, W]
        return self.verbalizer.labels_from_words(per_word).float()

    def target_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced generation batch -> full-vocabulary logits [N, V] (fp32) at the N
        positions that predict a real target token (batch["target"] != -100, row-major)."""
        with self.method.applied():
            hidden = self.family.run(self.base, self.inputs(batch))  # [B, A, H]
            hidden = hidden[batch["target"] != -100]  # [N, H]: only where an answer token is
            return self.family.token_logits(self.base, hidden, None)

    def inputs(self, batch: dict[str, torch.Tensor]) -> ModelInputs:
        """The model inputs after the method's `prepare_inputs` hook (also what decoding
        starts from)."""
        embeds = self.base.get_input_embeddings()(batch["input_ids"])  # [B, T, H]
        inputs = ModelInputs(embeds, batch["attention_mask"], batch["answer_pos"], batch["input_ids"],
                             self._shared_len(), self.memo, batch.get("decoder_input_ids"))
        return self.method.prepare_inputs(inputs, batch)

    def _shared_len(self) -> int:
        """Rows share their first tokens' states only if no dropout makes them differ."""
        if self.training and _has_dropout(self.base):
            return 0
        return self.shared_len

    @property
    def device(self) -> torch.device:
        return self.token_ids.device

    @contextmanager
    def reuse_shared(self):
        """Inference over many batches: the prompt's shared keys and values are computed once."""
        self.memo = {}
        try:
            yield self
        finally:
            self.memo = None

    @contextmanager
    def inference(self):
        """Eval mode, no autograd, the method applied and shared keys reused, for a block of
        batches; the training mode is restored after."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self.method.applied(), self.reuse_shared():
                yield self
        finally:
            self.train(was_training)


def _has_dropout(model: nn.Module) -> bool:
    """Any dropout active in training: nn.Dropout modules, or the float rate HF attention
    modules hand to their kernels."""
    return any((isinstance(m, nn.Dropout) and m.p > 0)
               or (isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0)
               for m in model.modules())
