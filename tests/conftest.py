"""Shared fixtures: tiny random models (Llama, BERT) with a word-level tokenizer, built here.

The toy task is learnable: positive sentences contain words from POS, negative from NEG,
mixed with neutral filler. Models are saved to folders so tests go through the real loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from filelock import FileLock
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BUILD_THREADS = min(2, torch.get_num_threads())
"""The tiny models are pretrained with this many threads, so a run under xdist builds the same
weights as a serial one."""
# under pytest-xdist (`-n 2`) each worker gets one thread: two-thread workers side by side
# on two cores run several times slower than one-thread ones
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else BUILD_THREADS)

POS = ["good", "great", "fine", "lovely", "superb"]
NEG = ["bad", "awful", "poor", "dull", "broken"]
FILLER = ["the", "movie", "food", "phone", "was", "really", "quite", "and", "very", "a", "day"]
PROMPT_WORDS = ["review", ":", "sentiment", "it", "is", "yes", "no", "positive", "negative",
                "question", "answer", "?", "."]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"] + [
    f"<extra_id_{i}>" for i in range(2)]


def toy_vocab() -> dict[str, int]:
    words = SPECIALS + POS + NEG + FILLER + PROMPT_WORDS
    return {w: i for i, w in enumerate(dict.fromkeys(words))}


def toy_tokenizer(kind: str, bos: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(toy_vocab(), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "masked":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]")
    if kind == "seq2seq":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", 6)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       eos_token="</s>",
                                       additional_special_tokens=["<extra_id_0>", "<extra_id_1>"])
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 5)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="<s>", eos_token="</s>")


KINDS = ("causal", "masked", "seq2seq", "gpt2", "gemma3")
"""Tiny models the suites run on; gpt2 and gemma3 are further causal architectures."""


def family_of(kind: str) -> str:
    return {"gpt2": "causal", "gemma3": "causal"}.get(kind, kind)


def tiny_model(kind: str, seed: int = 0, window: int = 8):
    torch.manual_seed(seed)
    v = len(toy_vocab())
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                          bos_token_id=5, eos_token_id=6, pad_token_id=0,
                                          initializer_range=0.1))
    if kind == "gemma3":  # one sliding-window layer (window 8, shorter than the inputs), one global
        return Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=window,
            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
            pad_token_id=0, bos_token_id=5, eos_token_id=6, initializer_range=0.1))
    if kind == "causal":
        cfg = LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          pad_token_id=0, bos_token_id=5, eos_token_id=6, tie_word_embeddings=True,
                          initializer_range=0.1)
        return LlamaForCausalLM(cfg)
    if kind == "masked":
        cfg = BertConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, pad_token_id=0,
                         initializer_range=0.1)
        return BertForMaskedLM(cfg)
    cfg = T5Config(vocab_size=v, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                   pad_token_id=0, eos_token_id=6, decoder_start_token_id=0,
                   initializer_factor=1.0)
    return T5ForConditionalGeneration(cfg)


def save_tiny(path: Path, kind: str, seed: int = 0, pretrain_steps: int = 0, **options) -> Path:
    model, tok = tiny_model(kind, seed, **options), toy_tokenizer(family_of(kind))
    if pretrain_steps:
        pretrain(model, tok, kind, pretrain_steps, seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def pretrain(model, tok, kind: str, steps: int, seed: int) -> float:
    """Give a tiny model a skill a prompt can unlock, like a real pretrained LM has.

    After "review :" it learns to answer the true sentiment; after "question :" the opposite.
    A soft prompt must learn to act like the "review :" trigger; the hard template without a
    trigger is near chance. Trained through cuetune's own forward path, so every family works.
    """
    from cuetune.data.examples import Example
    from cuetune.engine.forward import PromptModel
    from cuetune.families import family_for
    from cuetune.families.pretrained import LoadedModel
    from cuetune.methods.method import Method
    from cuetune.prompt.batch import collate
    from cuetune.prompt.encoder import PromptEncoder
    from cuetune.prompt.templates import parse
    from cuetune.prompt.verbalizers import Verbalizer

    family = family_for(model.config, family_of(kind))
    family.setup(tok)
    loaded = LoadedModel("tiny", model, tok, family, "")
    verbalizer = Verbalizer(["negative", "positive"]).bind(tok, True)
    encoders = [PromptEncoder(parse(f"{trigger} : {{text}} sentiment : {{answer}}"), tok, family)
                for trigger in ("review", "question")]
    prompt_model = PromptModel(loaded, Method(None, loaded, None, None), verbalizer)
    rows = toy_rows(256, seed + 100)
    items = []
    for flip, enc in enumerate(encoders):
        items += enc.encode([Example(r["text"], None, (r["label"] == "positive") ^ flip) for r in rows])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(items), (32,), generator=gen).tolist()
        batch = collate([items[i] for i in idx], tok.pad_token_id)
        loss = torch.nn.functional.cross_entropy(prompt_model(batch), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def toy_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 4) + [rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if label else "negative"})
    return rows


def copy_rows(n: int, seed: int) -> list[dict]:
    """The toy generation task: write the sentence's polar word, then a full stop."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(POS + NEG)
        words = rng.sample(FILLER, 3) + [word]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "target": f"{word} ."})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _build_tiny(root: Path) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        return {kind: save_tiny(root / kind, kind, pretrain_steps=600) for kind in KINDS}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, request) -> dict[str, Path]:
    """The tiny models, pretrained on the toy task. Pretraining takes most of a quick run's
    time, so they are kept in pytest's cache folder, keyed by this file, the library versions
    and the thread count (the same key builds the same weights), and built again when one
    changes; with the cache plugin off (`-p no:cacheprovider`, a clean CI clone) they are
    built in a temporary folder."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return _build_tiny(tmp_path_factory.mktemp("tiny"))
    key = hashlib.sha256(Path(__file__).read_bytes() + f"{torch.__version__} {transformers.__version__} "
                         f"{BUILD_THREADS}".encode()).hexdigest()[:12]
    root = cache.mkdir(f"tiny-models-{key}")
    with FileLock(root / "lock"):  # xdist workers: one builds, the others wait for it
        if not (root / "complete").is_file():
            work = _build_tiny(tmp_path_factory.mktemp("tiny"))
            for kind in KINDS:
                shutil.rmtree(root / kind, ignore_errors=True)
                shutil.copytree(work[kind], root / kind)
            (root / "complete").write_text("built\n")
    return {kind: root / kind for kind in KINDS}


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    return {"train": write_jsonl(root / "train.jsonl", toy_rows(64, 1)),
            "dev": write_jsonl(root / "dev.jsonl", toy_rows(24, 2)),
            "test": write_jsonl(root / "test.jsonl", toy_rows(24, 3))}


def toy_config(model_dir: Path, data: dict[str, Path], out: Path, **sections) -> dict:
    """A raw config for the toy task on a tiny model; `sections` update top-level sections."""
    cfg = {
        # CUETUNE_TEST_DEVICE=cuda runs the suite's tiny models on a GPU (benchmarks/gpu_check.sh)
        "model": {"name": str(model_dir), "device": os.environ.get("CUETUNE_TEST_DEVICE", "cpu"),
                  "dtype": os.environ.get("CUETUNE_TEST_DTYPE", "float32")},
        "data": {"train": str(data["train"]), "dev": str(data["dev"]), "test": str(data["test"]),
                 "labels": ["negative", "positive"]},
        "prompt": {"template": "{soft:4} {text} sentiment : {answer}"},
        "method": {"name": "soft"},
        "train": {"seed": 0, "lr": 0.1, "batch_size": 8, "max_steps": 40, "eval_every": 10,
                  "patience": None, "progress": False, "warmup_ratio": 0.0},
        "output_dir": str(out),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
