"""`ModelInputs`: what a family's forward reads, one typed record for every forward path.

The prompt model builds it from a batch (`engine.forward.PromptModel.inputs`), a server from a
batch of several adapters' rows (`serve.mixed.prepare`); a method's `prepare_inputs` hook fills
in its part (soft-prompt rows, prefix keys and values, the pooling position); the family's
`run` and the fast path read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class ModelInputs:
    inputs_embeds: torch.Tensor
    """[B, T, H]: the token embeddings, with any soft-prompt rows in place."""
    attention_mask: torch.Tensor
    """[B, T]: 1 for a real token."""
    answer_pos: torch.Tensor
    """[B]: the column whose hidden state is read; [B, A] for teacher-forced answers."""
    input_ids: torch.Tensor
    """[B, T]: the ids under the embeddings (the key of a shared start kept across batches)."""
    shared_len: int = 0
    """Leading columns every row shares, computed once (0: none; the fast path checks)."""
    memo: dict | None = None
    """Shared starts' keys and values kept across batches (`PromptModel.reuse_shared`)."""
    decoder_input_ids: torch.Tensor | None = None
    """[B, A]: a seq2seq decoder's teacher-forced inputs (generation training)."""
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    """Per layer (keys, values) [1 or B, kv_heads, P, d] every position attends to."""
    row_groups: list[tuple[torch.Tensor, int, object]] | None = None
    """Groups of rows that start alike (rows [R], shared length, memo key): a mixture's."""

    def rows(self, idx: torch.Tensor, shared_len: int, memo: dict | None) -> ModelInputs:
        """Rows `idx` as inputs of their own, with their own shared start and memo."""
        return replace(self, inputs_embeds=self.inputs_embeds[idx], attention_mask=self.attention_mask[idx],
                       answer_pos=self.answer_pos[idx], input_ids=self.input_ids[idx], shared_len=shared_len,
                       memo=memo, row_groups=None)
