"""Decoding text from a prompt model: greedy, beam search and sampling.

Our own loop, not `transformers.generate`. That way the prompt goes through exactly the
forward the model was trained with: the method's `prepare_inputs` (soft prompt rows, prefix
keys and values, LoRA) and the shared-prompt cache. PEFT users see `generate()` drop soft
prompts or fail with caches; here one code path serves training and decoding.

A decoding state (built by the model's family: `Family.decoding_state`) runs the prompt once
and then one token per step against its key/value cache. On a decoder, the prompt's shared
tokens run once for the whole `generate` call (`PromptModel.reuse_shared`). Batches are padded
on the left, so every row's next token is read from the last column. Sampling draws row i from
its own generator seeded with `seed + i`, so an output never depends on how inputs were batched.
Every strategy, and `cuetune serve`, scores a step's tokens through `penalize` first (repetition
penalty, no-repeat n-grams), over the tokens each row has written.
"""

from __future__ import annotations

import torch

from cuetune.config import GenerateConfig
from cuetune.engine.forward import PromptModel
from cuetune.engine.inference import run_batches
from cuetune.prompt.encoder import Encoded


class Stops:
    """When a text ends (an end token, or a stop string), and the text it ends with."""

    def __init__(self, tokenizer, stop: list[str], family):
        self.tok = tokenizer
        self.strings = [s for s in stop if s]
        self.end_ids = family.end_token_ids(tokenizer)

    def ended(self, tokens: list[int]) -> bool:
        if tokens and tokens[-1] in self.end_ids:
            return True
        return bool(self.strings) and any(s in self._text(tokens) for s in self.strings)

    def _text(self, tokens: list[int]) -> str:
        """The text written so far, from its first visible character: white space before the
        text begins is no stop (a model that starts its answer on a new line after
        "Summary:" has not ended it)."""
        return self.tok.decode(tokens, skip_special_tokens=True).lstrip()

    def finish(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.end_ids:
            tokens = tokens[:-1]
        text = self._text(tokens)
        cut = min((text.index(s) for s in self.strings if s in text), default=len(text))
        return text[:cut].strip()


def generate(model: PromptModel, tokenizer, items: list[Encoded], cfg: GenerateConfig) -> list[str]:
    """Texts the model writes after each encoded prompt (teacher-forced targets are ignored),
    cut at the end token or the first stop string."""
    stops = Stops(tokenizer, cfg.stop, model.family)
    return [stops.finish(seq) for seq in generate_ids(model, tokenizer, items, cfg, stops)]


def generate_ids(model: PromptModel, tokenizer, items: list[Encoded], cfg: GenerateConfig,
                 stops: Stops | None = None) -> list[list[int]]:
    """The token ids written after each prompt, the end token included when one was written."""
    stops = stops or Stops(tokenizer, cfg.stop, model.family)

    def decode(batch, idx):
        state = model.family.decoding_state(model, batch, cfg.max_new_tokens)
        if cfg.strategy == "beam":
            return _beam(state, cfg, stops)
        return _greedy_or_sample(state, cfg, stops, [cfg.seed + i for i in idx])

    out: list[list[int]] = [[] for _ in items]
    prompts = [prompt_only(e) for e in items]
    for idx, seqs in run_batches(model, prompts, tokenizer.pad_token_id, cfg.batch_size, decode,
                                 side="left"):
        for i, seq in zip(idx, seqs, strict=True):
            out[i] = seq
    return out


def prompt_only(e: Encoded) -> Encoded:
    """The prompt of a teacher-forced item (what decoding starts from)."""
    if e.target is None:
        return e
    n = len(e.input_ids) if e.decoder_ids is not None else e.answer_pos + 1
    return Encoded(e.input_ids[:n], e.soft_index[:n], e.answer_pos, e.label, e.truncated, refs=e.refs)


def _greedy_or_sample(state, cfg: GenerateConfig, stops: Stops, seeds: list[int]) -> list[list[int]]:
    logits = state.logits  # [B, V]
    rows = logits.size(0)
    gens = [torch.Generator().manual_seed(s) for s in seeds] if cfg.strategy == "sample" else None
    seqs: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    filler = next(iter(stops.end_ids))
    for step in range(cfg.max_new_tokens):
        logits = penalize(logits, seqs, cfg)
        if gens is None:
            tokens = logits.argmax(-1)
        else:
            probs = filter_logits(logits.float(), cfg).softmax(-1).cpu()
            tokens = torch.tensor([int(torch.multinomial(probs[r], 1, generator=gens[r]))
                                   for r in range(rows)])
        for r in range(rows):
            if not done[r]:
                seqs[r].append(int(tokens[r]))
                done[r] = stops.ended(seqs[r])
        if all(done) or step == cfg.max_new_tokens - 1:
            break
        feed = torch.tensor([filler if d else s[-1] for d, s in zip(done, seqs, strict=True)],
                            device=logits.device)
        logits = state.step(feed)
    return seqs


def penalize(scores: torch.Tensor, seqs: list[list[int]], cfg: GenerateConfig) -> torch.Tensor:
    """Scores [B, V] (logits or log-probabilities) with row r's repeats of `seqs[r]`, the tokens
    it has written, penalized (`repetition_penalty`) or forbidden (`no_repeat_ngram_size`).

    Small models writing summaries loop on a sentence until `max_new_tokens` (SAMSum, Gemma-3);
    these are the two remedies transformers users know, with the same arithmetic.
    """
    p, n = cfg.repetition_penalty, cfg.no_repeat_ngram_size
    if p == 1.0 and not n:
        return scores
    scores = scores.clone()
    for r, seq in enumerate(seqs):
        if p != 1.0 and seq:
            seen = torch.tensor(sorted(set(seq)), device=scores.device)
            s = scores[r, seen]
            scores[r, seen] = torch.where(s > 0, s / p, s * p)
        if n and len(seq) >= n:
            head = seq[len(seq) - n + 1:]  # the n-1 last tokens: what a new n-gram starts with
            banned = {seq[i + n - 1] for i in range(len(seq) - n + 1) if seq[i:i + n - 1] == head}
            scores[r, sorted(banned)] = float("-inf")
    return scores


def filter_logits(logits: torch.Tensor, cfg: GenerateConfig) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of logits [B, V]."""
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = logits.topk(min(cfg.top_k, logits.size(-1)), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= cfg.top_p  # keep the first token past top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _beam(state, cfg: GenerateConfig, stops: Stops) -> list[list[int]]:
    """Beam search per row; finished texts are ranked by log-prob / length ** length_penalty,
    and a row stops once it has `num_beams` finished texts."""
    k = cfg.num_beams
    rows, vocab = state.logits.shape
    device = state.logits.device
    state.select(torch.arange(rows, device=device).repeat_interleave(k))
    logp = state.logits.float().log_softmax(-1).repeat_interleave(k, 0)  # [B*K, V]
    scores = torch.full((rows, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam to start with
    live: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(rows)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(rows)]
    done = [False] * rows
    filler = next(iter(stops.end_ids))
    for step in range(cfg.max_new_tokens):
        logp = penalize(logp, [seq for beams in live for seq in beams], cfg)  # [B*K, V]
        cand = (scores.reshape(-1, 1) + logp).reshape(rows, k * vocab)
        top, where = cand.topk(2 * k, dim=1)  # enough that K survive after some finish
        src = torch.arange(rows * k, device=device).reshape(rows, k)
        new_scores = torch.full_like(scores, float("-inf"))
        new_tokens = torch.full((rows, k), filler, dtype=torch.long, device=device)
        new_live: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(rows)]
        for r in range(rows):
            kept = 0
            for s, w in zip(top[r].tolist(), where[r].tolist(), strict=True):
                if done[r] or s == float("-inf") or kept == k:
                    break
                beam, token = divmod(w, vocab)
                seq = live[r][beam] + [token]
                if stops.ended(seq):
                    finished[r].append((s / len(seq) ** cfg.length_penalty, seq))
                    continue
                src[r, kept], new_scores[r, kept], new_tokens[r, kept] = r * k + beam, s, token
                new_live[r][kept] = seq
                kept += 1
            done[r] = done[r] or len(finished[r]) >= k or kept == 0
        scores, live = new_scores, new_live
        if all(done) or step == cfg.max_new_tokens - 1:
            break
        state.select(src.reshape(-1))
        logp = state.step(new_tokens.reshape(-1)).float().log_softmax(-1)
    out = []
    for r in range(rows):  # a row that ran out of steps ranks its live beams too; a done one
        # has dropped them (kept only while other rows of the batch ran on), so batching
        # never changes a text (transformers' early_stopping=True does the same)
        live_ranked = [] if done[r] else [(s / max(1, len(seq)) ** cfg.length_penalty, seq)
                                          for s, seq in zip(scores[r].tolist(), live[r], strict=True)
                                          if s > float("-inf") and seq]
        pool = finished[r] + live_ranked
        out.append(max(pool, key=lambda p: p[0])[1] if pool else [])
    return out
