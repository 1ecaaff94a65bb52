"""Label probabilities from this PEFT adapter, exactly as cuetune computes them.

Written by `cuetune export` beside the adapter. It builds the input token ids the way cuetune
did (cuetune_prompt.json: the prompt's fixed token ids and where the input text goes, with or
without a leading space), runs the base model with PEFT, reads the logits of the label words'
tokens at the answer position (the next token) and scores each label as cuetune does.

    python example.py "a gorgeous, moving film" "tedious and overlong"
"""

import json
import sys
import warnings
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

# PEFT 0.21 reads transformers' `is_gradient_checkpointing`, which transformers 5.24 deprecated,
# so loading the adapter printed a FutureWarning about PEFT's call, not this script's (PEFT 0.22
# reads the new name). Only that warning is kept off the output.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

HERE = Path(__file__).resolve().parent
RECIPE = json.loads((HERE / "cuetune_prompt.json").read_text(encoding="utf-8"))
BASE = RECIPE["base_model"]["path"]  # the weights the adapter was trained on
tokenizer = AutoTokenizer.from_pretrained(BASE)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), HERE).eval()


def input_ids(text: str, text_pair: str | None = None) -> list[int]:
    """The prompt's token ids: fixed pieces as they are, input slots tokenised in place.
    (cuetune also cuts inputs longer than its data.max_length; this does not.)"""
    ids = []
    for piece in RECIPE["pieces"]:
        if "ids" in piece:
            ids += piece["ids"]
        else:
            value = text if piece["slot"] == "text" else (text_pair or "")
            ids += tokenizer((" " if piece["lead_space"] else "") + value,
                             add_special_tokens=False)["input_ids"]
    return ids


def label_probs(text: str, text_pair: str | None = None) -> dict[str, float]:
    ids = torch.tensor([input_ids(text, text_pair)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()  # [V]: the answer is the next token
    pool = {"first": lambda t: t[0], "mean": torch.mean, "max": torch.max}[RECIPE["multi_token"]]
    scores = [torch.logsumexp(torch.stack([pool(logits[w["ids"]]) for w in RECIPE["label_words"][label]]), 0)
              for label in RECIPE["labels"]]  # a label's words: log-sum-exp of their scores
    return dict(zip(RECIPE["labels"], torch.stack(scores).softmax(0).tolist(), strict=True))


if __name__ == "__main__":
    for line in sys.argv[1:] or ["an example input"]:
        print(json.dumps({"text": line, "probs": label_probs(line)}))
