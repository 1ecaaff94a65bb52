"""Batches: encoded items padded into the tensors a forward takes.

Classification pads on the right (the answer position is read per row); generation pads on
the left (decoding appends on the right). Teacher-forced generation items add their targets.
"""

from __future__ import annotations

import torch

from cuetune.prompt.encoder import Encoded


def collate(items: list[Encoded], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch on the right (classification) or the left (generation appends on the right).

    Returns input_ids/attention_mask/soft_index [B, T] and answer_pos [B] (column in the
    padded row). Teacher-forced generation items add target [B, A] (-100 past a row's end),
    answer_pos becomes [B, A] (where each target token is predicted from) and seq2seq items add
    decoder_input_ids [B, A]. Items with `views` give one row per view (view-major within an
    item) and one label per item."""
    if items[0].views is not None:
        batch = collate([v for e in items for v in e.views], pad_id, side)
        if all(e.label is not None for e in items):
            batch["labels"] = torch.tensor([e.label for e in items])
        return batch
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    soft = torch.full((len(items), width), -1, dtype=torch.long)
    answer = []
    for row, e in enumerate(items):
        n = len(e.input_ids)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = torch.tensor(e.input_ids)
        mask[row, cols] = 1
        soft[row, cols] = torch.tensor(e.soft_index)
        answer.append(e.answer_pos + cols.start)
    batch = {"input_ids": ids, "attention_mask": mask, "soft_index": soft,
             "answer_pos": torch.tensor(answer)}
    if all(e.label is not None for e in items):
        batch["labels"] = torch.tensor([e.label for e in items])
    if items[0].target is not None:
        batch.update(_targets(items, [0 if e.decoder_ids else width - len(e.input_ids)
                                      for e in items] if side == "left" else None, pad_id))
    return batch


def _targets(items: list[Encoded], shift: list[int] | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Teacher-forcing tensors: targets [B, A] padded with -100, their positions [B, A]
    (padding repeats a row's last position; the loss ignores it) and seq2seq decoder inputs."""
    width = max(len(e.target) for e in items)
    target = torch.full((len(items), width), -100, dtype=torch.long)
    pos = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n, at = len(e.target), torch.tensor(e.target_pos) + (shift[row] if shift else 0)
        target[row, :n], pos[row, :n], pos[row, n:] = torch.tensor(e.target), at, at[-1]
    out = {"target": target, "answer_pos": pos}
    if items[0].decoder_ids is not None:
        dec = torch.full((len(items), width), pad_id, dtype=torch.long)
        for row, e in enumerate(items):
            dec[row, :len(e.decoder_ids)] = torch.tensor(e.decoder_ids)
        out["decoder_input_ids"] = dec
    return out
