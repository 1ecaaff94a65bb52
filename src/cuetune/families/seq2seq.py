"""Encoder-decoders (T5): the template goes to the encoder with a sentinel at the answer; the
decoder's first step after the sentinel predicts the label word (or the answer text)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, DynamicCache, EncoderDecoderCache

from cuetune.errors import ModelError
from cuetune.families.family import Family, kv_cache, pick, repeat_rows, select_cache, word_targets

SENTINEL = "<extra_id_0>"
"""T5's first infilling sentinel: it stands where the answer goes."""
NEXT_SENTINEL = "<extra_id_1>"
"""T5 closes an infilled span with the next sentinel, so it ends a written answer."""


class Seq2Seq(Family):
    name = "seq2seq"
    auto_class = AutoModelForSeq2SeqLM
    generates = True
    peft_task_type = "SEQ_2_SEQ_LM"

    @classmethod
    def detect(cls, config) -> bool:
        return bool(getattr(config, "is_encoder_decoder", False))

    def setup(self, tokenizer) -> None:
        self.sentinel_id = _token_id(tokenizer, SENTINEL)
        if self.sentinel_id is None:
            raise ModelError(f"seq2seq tokenizer has no {SENTINEL} token for the answer")

    def answer_token_id(self, tokenizer) -> int:
        return self.sentinel_id

    def end_token_ids(self, tokenizer) -> set[int]:
        return super().end_token_ids(tokenizer) | ({_token_id(tokenizer, NEXT_SENTINEL)} - {None})

    def run(self, model, inputs):
        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        start = model.config.decoder_start_token_id
        taught = inputs.decoder_input_ids  # generation: [B, A] teacher-forced answer
        if taught is None:
            dec = torch.tensor([[start, self.sentinel_id]] * embeds.size(0), device=embeds.device)
        else:
            dec = torch.cat([taught.new_full((taught.size(0), 1), start), taught], 1)
        enc = model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        extra = {}
        if inputs.prefix is not None:  # T5's encoder reads no cache: the decoder gets it
            own = kv_cache(model.config, inputs.prefix, embeds.size(0))
            extra["cache"] = EncoderDecoderCache(own, DynamicCache(config=model.config))
        out = model.get_decoder()(input_ids=dec, encoder_hidden_states=enc.last_hidden_state,
                                  encoder_attention_mask=mask, use_cache=False, **extra)
        if taught is not None:
            return pick(out.last_hidden_state, inputs.answer_pos)  # [B, A, H]
        return out.last_hidden_state[:, -1]  # [B, H]: the step after the sentinel

    teaches_words = True

    def teach_words(self, batch, words):
        """The decoder reads [start, sentinel, t1 .. t(m-1)]; step i after the sentinel predicts
        the word's token i."""
        B, W = batch["input_ids"].size(0), len(words)
        target = word_targets(words, B, batch["input_ids"].device)  # [B*W, m]
        out = repeat_rows(batch, W)
        taught = torch.cat([target.new_full((B * W, 1), self.sentinel_id), target[:, :-1].clamp(min=0)], 1)
        out["decoder_input_ids"], out["target"] = taught, target
        out["answer_pos"] = torch.arange(1, target.size(1) + 1, device=target.device).expand(B * W, -1)
        return out

    def decoding_state(self, prompt_model, batch, max_new):
        return Seq2SeqState(prompt_model, batch)

    def kv_layout(self, model):
        cfg = model.config
        return cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv

    def capture_kv(self, model, ids):
        enc = model.get_encoder()(input_ids=ids)
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        model.get_decoder()(input_ids=ids, encoder_hidden_states=enc.last_hidden_state,
                            cache=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.self_attention_cache.layers]

    def token_logits(self, model, hidden, token_ids):
        if getattr(model.config, "tie_word_embeddings", False):
            hidden = hidden * model.config.d_model ** -0.5  # T5 rescales before a tied head
        weight = model.get_output_embeddings().weight
        weight = weight if token_ids is None else weight[token_ids]
        return F.linear(hidden.to(weight.dtype), weight).float()


class Seq2SeqState:
    """An encoder's output and the decoder's cache after [start, sentinel]."""

    def __init__(self, model, batch: dict):
        self.base, self.family = model.base, model.family
        inputs = model.inputs(batch)
        embeds, self.enc_mask = inputs.inputs_embeds, inputs.attention_mask
        self.enc = self.base.get_encoder()(inputs_embeds=embeds,
                                           attention_mask=self.enc_mask).last_hidden_state  # [B, T, H]
        rows = embeds.size(0)
        own = kv_cache(None, inputs.prefix, rows)
        self.cache = EncoderDecoderCache(own, DynamicCache(config=self.base.config))
        start = self.base.config.decoder_start_token_id
        dec = torch.tensor([[start, self.family.sentinel_id]] * rows, device=embeds.device)
        self.logits = self._decode(dec)

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base.get_decoder()(input_ids=ids, encoder_hidden_states=self.enc,
                                      encoder_attention_mask=self.enc_mask,
                                      cache=self.cache, use_cache=True)
        return self.family.token_logits(self.base, out.last_hidden_state[:, -1], None)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._decode(tokens[:, None])

    def select(self, rows: torch.Tensor) -> None:
        select_cache(self.cache.self_attention_cache, rows)
        select_cache(self.cache.cross_attention_cache, rows)
        self.enc, self.enc_mask = self.enc[rows], self.enc_mask[rows]


def _token_id(tokenizer, token: str) -> int | None:
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        return None
    return ids[0]
