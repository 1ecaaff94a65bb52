"""A merged model as a GGUF file for llama.cpp and Ollama (`cuetune merge --gguf f16|q8_0`).

Written as the exact inverse of how transformers reads a GGUF (`gguf_file=`): tensor names
from the same name map (`get_gguf_hf_weights_map`), the attention query and key rows permuted
the way llama.cpp's converter does (transformers undoes it when loading), hyperparameters
under the keys transformers maps back to the config. Llama-architecture models only (SmolLM2
and any LlamaForCausalLM); others are refused with the reason.

The tokenizer goes in as llama.cpp reads it: copied field for field from the GGUF the base
model came from (the packaged aliases), or else built from a byte-level BPE tokenizer's
vocabulary and merges. Norm weights stay float32; matrices are float16 or Q8_0.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, get_gguf_hf_weights_map

from cuetune.errors import ArtifactError

KINDS = ("f16", "q8_0")
ARCHITECTURES = {"llama": "llama"}
"""transformers model_type -> GGUF architecture written here."""


def write_gguf(model: torch.nn.Module, tokenizer, path: Path, kind: str, source: Path | None = None) -> None:
    """Write `model` (a merged causal LM) to `path`; `source`: the GGUF the base came from,
    whose tokenizer fields are copied."""
    if kind not in KINDS:
        raise ArtifactError(f"--gguf {kind}: choose one of {list(KINDS)}")
    cfg = model.config
    arch = ARCHITECTURES.get(cfg.model_type)
    if arch is None:
        raise ArtifactError(f"--gguf: writes Llama-architecture models only; this one is "
                            f"{cfg.model_type!r} (save the merged folder and convert it with "
                            "llama.cpp's convert_hf_to_gguf.py)")
    writer = gguf.GGUFWriter(str(path), arch)
    _hyperparameters(writer, cfg, gguf.LlamaFileType.MOSTLY_F16 if kind == "f16"
                     else gguf.LlamaFileType.MOSTLY_Q8_0)
    if source is not None:
        _copy_tokenizer(writer, gguf.GGUFReader(str(source)))
    else:
        _bpe_tokenizer(writer, tokenizer)
    for name, data, qtype in _tensors(model, kind):
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hyperparameters(writer, cfg, file_type) -> None:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    rope = rope or getattr(cfg, "rope_theta", 10000.0)
    writer.add_name("cuetune merged model")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)


def _copy_tokenizer(writer, reader) -> None:
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        array = vtype == gguf.GGUFValueType.ARRAY
        writer.add_key_value(key, field.contents(), vtype, field.types[1] if array else None)


def _bpe_tokenizer(writer, tokenizer) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ArtifactError(f"--gguf: the tokenizer is {spec['model']['type']}, which llama.cpp has no "
                            "form for here (byte-level BPE tokenizers and GGUF-packaged models are "
                            "written)")
    vocab = tokenizer.get_vocab()
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control
    writer.add_token_merges(merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                          (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(model, kind: str):
    """(GGUF name, data, quantisation type) per tensor; the tied output head is left out
    (a GGUF without `output.weight` is read as tied)."""
    cfg = model.config
    names = {hf: name for name, hf in get_gguf_hf_weights_map(model, LlamaTensorProcessor()).items()}
    tied = getattr(cfg, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if hf_name not in names:
            raise ArtifactError(f"--gguf: no GGUF name for weight {hf_name}")
        name, data = names[hf_name], tensor.detach().float().cpu().numpy()
        if ".attn_q." in name:
            data = _permute(data, cfg.num_attention_heads)
        elif ".attn_k." in name:
            data = _permute(data, cfg.num_key_value_heads)
        if data.ndim == 1:
            yield name, data.astype(np.float32), gguf.GGMLQuantizationType.F32
        elif kind == "f16":
            yield name, data.astype(np.float16), gguf.GGMLQuantizationType.F16
        else:
            q8 = gguf.GGMLQuantizationType.Q8_0
            yield name, gguf.quants.quantize(data, q8), q8


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for query/key rows [heads * d, ...] (transformers reverses it)."""
    dim = weights.shape[0] // heads // 2
    return weights.reshape(heads, 2, dim, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
