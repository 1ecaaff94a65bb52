import pytest
import torch
from conftest import toy_tokenizer

from cuetune import families
from cuetune.data.examples import Example
from cuetune.errors import TemplateError, VerbalizerError
from cuetune.prompt.batch import collate
from cuetune.prompt.encoder import PromptEncoder
from cuetune.prompt.templates import parse
from cuetune.prompt.verbalizers import Verbalizer


def test_multi_token_scoring_first_mean_max():
    tok = toy_tokenizer("causal")
    words = {"negative": ["bad awful", "poor"], "positive": ["good great"]}
    ids = {w: tok.convert_tokens_to_ids(w) for w in ["bad", "awful", "poor", "good", "great"]}
    logits_by_id = {ids["bad"]: 1.0, ids["awful"]: 3.0, ids["poor"]: 0.0, ids["good"]: 2.0,
                    ids["great"]: -2.0}
    for mode, neg_words, pos in [("first", [1.0, 0.0], 2.0), ("mean", [2.0, 0.0], 0.0),
                                 ("max", [3.0, 0.0], 2.0)]:
        v = Verbalizer(["negative", "positive"], words, mode).bind(tok, leading_space=True)
        token_logits = torch.tensor([[logits_by_id[int(t)] for t in v.token_ids]])
        got = v.label_logits(token_logits)[0]
        want_neg = torch.logsumexp(torch.tensor(neg_words), 0)
        assert torch.allclose(got, torch.tensor([want_neg, pos])), mode


def test_verbalizer_errors_name_the_field():
    tok = toy_tokenizer("causal")
    with pytest.raises(VerbalizerError, match=r"prompt.verbalizer.positive\[0\]: 'zzz' does not encode"):
        Verbalizer(["negative", "positive"], {"negative": "bad", "positive": "zzz"}).bind(tok, True)
    with pytest.raises(VerbalizerError, match="share the word tokens"):
        Verbalizer(["negative", "positive"], {"negative": "bad", "positive": ["good", "bad"]}).bind(tok, True)
    with pytest.raises(VerbalizerError, match="verbalizer.postive: not a label; did you mean 'positive'"):
        Verbalizer(["negative", "positive"], {"negative": "bad", "postive": "good"})
    with pytest.raises(VerbalizerError, match="no words for label 'positive'"):
        Verbalizer(["negative", "positive"], {"negative": "bad"})


def _family(kind, tok):
    family = families.get(kind)
    family.setup(tok)
    return family


@pytest.mark.parametrize("kind", ["causal", "masked", "seq2seq"])
def test_layout_per_family(kind):
    tok = toy_tokenizer(kind)
    enc = PromptEncoder(parse("{soft:2} review : {text} sentiment : {answer} ."), tok, _family(kind, tok))
    e = enc.encode_one(Example("the movie was good", label=1))
    toks = tok.convert_ids_to_tokens(e.input_ids)
    assert e.soft_index.count(-1) == len(toks) - 2 and max(e.soft_index) == 1
    if kind == "causal":
        assert toks[0] == "<s>" and toks[e.answer_pos] == ":" and e.answer_pos == len(toks) - 1
    elif kind == "masked":
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]" and toks[e.answer_pos] == "[MASK]"
        assert toks[e.answer_pos + 1] == "."
    else:
        assert toks[e.answer_pos] == "<extra_id_0>" and toks[-1] == "</s>"


def test_truncation_keeps_template_and_answer(caplog):
    tok = toy_tokenizer("masked")
    enc = PromptEncoder(parse("review : {text} {text_pair} sentiment : {answer}"), tok,
                        _family("masked", tok), max_length=16)
    long = " ".join(["good"] * 50)
    e = enc.encode([Example(long, "bad bad", 1), Example("fine", "bad", 0)], "test rows")
    toks = tok.convert_ids_to_tokens(e[0].input_ids)
    assert len(toks) == 16 and toks[:3] == ["[CLS]", "review", ":"]
    assert toks[-4:] == ["sentiment", ":", "[MASK]", "[SEP]"] and toks.count("bad") == 2
    assert e[0].truncated and not e[1].truncated
    assert "1 of 2 test rows were truncated" in caplog.text
    with pytest.raises(TemplateError, match="needs .* tokens but data.max_length is 4"):
        encoder = PromptEncoder(parse("{soft:5} {text} {answer}"), tok, _family("masked", tok), max_length=4)
        encoder.encode_one(Example("good"))


def test_causal_answer_must_follow_text():
    with pytest.raises(TemplateError, match="put {text}"):
        PromptEncoder(parse("{answer} : {text}"), toy_tokenizer("causal"), families.get("causal"))


def test_collate_right_pads():
    tok = toy_tokenizer("causal")
    enc = PromptEncoder(parse("{soft:1} {text} {answer}"), tok, families.get("causal"))
    b = collate(enc.encode([Example("good", label=1), Example("the movie was bad", label=0)]), 0)
    assert b["input_ids"].shape == (2, 6) and b["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert b["answer_pos"].tolist() == [2, 5] and b["labels"].tolist() == [1, 0]


@pytest.mark.parametrize("max_length,cut", [(9, 24), (10, 0)])
def test_metrics_count_the_inputs_cut_to_max_length(tiny_dirs, toy_data, tmp_path, max_length, cut):
    """Every toy input is five words; "<s> review : ... sentiment :" leaves max_length - 5."""
    from conftest import toy_config

    import cuetune

    cfg = toy_config(tiny_dirs["causal"], toy_data, tmp_path / "run", method={"name": "zero-shot"},
                     prompt={"template": "review : {text} sentiment : {answer}"})
    cfg["data"]["max_length"] = max_length
    manifest = cuetune.train(cfg)
    assert manifest.metrics["test"]["truncated"] == cut and manifest.metrics["test"]["n"] == 24
