"""From a tuned run to something other tools serve: a plain transformers folder with the
adapter folded into the weights (`cuetune merge`), and optionally the same as a GGUF file
(`--gguf f16|q8_0`, see gguf_export).

Only adapters that are weight changes merge (LoRA, prompt-ft, full); a soft prompt or a
prefix is an input the model reads, so merging it is refused with the reason and PEFT export
is the way to deploy it. The folder also holds `cuetune_prompt.json` (as PEFT export writes):
the merged weights compute the run's answers only on the prompt the run used.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch

from cuetune.errors import ArtifactError
from cuetune.families import pretrained as models
from cuetune.runs.gguf import KINDS, write_gguf
from cuetune.runs.peft import RECIPE, prompt_recipe
from cuetune.runs.tuned import load_run


def merge(run_dir: str | Path, out_dir: str | Path, gguf: str | None = None) -> Path:
    """Write `out_dir` (which must not exist): the run's base model with its adapter merged,
    saved by transformers (safetensors, config, tokenizer, generation config), plus the prompt
    recipe; with `gguf` ("f16" or "q8_0") also `model-<gguf>.gguf`. Written into a temporary
    folder beside `out_dir` and renamed, so a failure leaves nothing that looks complete."""
    out = Path(out_dir)
    if gguf is not None and gguf not in KINDS:
        raise ArtifactError(f"--gguf {gguf}: choose one of {list(KINDS)}")
    if out.exists():
        raise ArtifactError(f"{out}: already exists; choose a new folder for the merged model")
    tuned = load_run(run_dir)
    base = tuned.pipe.loaded.model
    if getattr(base, "cuetune_head_fallback", False):
        raise ArtifactError(f"merge: {tuned.manifest.base_model.name} has no MLM head of its own "
                            "(cuetune substitutes one when loading it), so a merged folder would not "
                            "load as the run computed")
    weights = tuned.pipe.method.merged_weights()
    model = copy.deepcopy(base)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            own[name].copy_(tensor)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tuned.pipe.loaded.tokenizer.save_pretrained(tmp)
        recipe = {**prompt_recipe(tuned), "merged_from": str(Path(run_dir).resolve())}
        recipe["base_model"]["path"] = str(out.resolve())  # the merged folder is the model now
        (tmp / RECIPE).write_text(json.dumps(recipe, indent=1, ensure_ascii=False), encoding="utf-8")
        if gguf is not None:
            write_gguf(model, tuned.pipe.loaded.tokenizer, tmp / f"model-{gguf}.gguf", gguf,
                       source=models.source_gguf(tuned.manifest.base_model.name))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
