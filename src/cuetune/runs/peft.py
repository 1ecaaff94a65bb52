"""PEFT interoperability: write a run's adapter in PEFT's layout, and turn a PEFT adapter into
a cuetune run.

PEFT's layout is a folder with `adapter_config.json` and `adapter_model.safetensors`; the
method decides the tensors (`Method.peft_export` / `peft_import`), this module does the files.
Only safetensors is read: PEFT's older `adapter_model.bin` is a pickle and is refused.
Export writes into a temporary folder beside the target and renames it, so a failed export
leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cuetune import methods
from cuetune.config import variant
from cuetune.data.splits import load_splits
from cuetune.engine.pipeline import build
from cuetune.errors import ArtifactError, ConfigError
from cuetune.families import pretrained as models
from cuetune.runs.config_file import as_config
from cuetune.runs.manifest import ImportRecord, Manifest
from cuetune.runs.train import finish_run, prepare_run_dir
from cuetune.runs.tuned import load_run

RECIPE = "cuetune_prompt.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def export_peft(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the run's adapter as a PEFT adapter folder `out_dir` (which must not exist)."""
    out = Path(out_dir)
    if out.exists():
        raise ArtifactError(f"{out}: already exists; choose a new folder for the PEFT adapter")
    tuned = load_run(run_dir)
    peft_config, tensors = tuned.pipe.method.peft_export()
    peft_config.base_model_name_or_path = tuned.manifest.base_model.name
    peft_config.inference_mode = True
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        peft_config.save_pretrained(str(tmp))
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / PEFT_WEIGHTS),
                  metadata={"format": "pt"})
        _write_recipe(tuned, tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def prompt_recipe(tuned) -> dict:
    """What a PEFT user needs to feed the adapter the token ids cuetune fed it, and to score
    the labels as cuetune does (see resources/peft_export/README.md)."""
    pipe = tuned.pipe
    prompt = tuned.config.prompt
    if prompt.multi_token == "chain" or prompt.demonstrations is not None:
        what = ("prompt.multi_token: chain (a second forward per label word)"
                if prompt.multi_token == "chain" else "prompt.demonstrations (chosen per input)")
        raise ArtifactError(f"export: the run uses {what}, which the exported PEFT recipe and "
                            "example.py do not reproduce; serve it with cuetune (cuetune.load)")
    recipe = {"format": "cuetune-prompt", "version": 1,
              "base_model": {"name": tuned.manifest.base_model.name,
                             "path": models.resolve(tuned.manifest.base_model.name)[0],
                             "fingerprint": tuned.manifest.base_model.fingerprint},
              "template": pipe.encoder.template.source, "task": tuned.task,
              "virtual_tokens": pipe.encoder.num_soft, "pieces": pipe.encoder.pieces()}
    verbalizer = pipe.verbalizer
    if verbalizer is not None and pipe.method.uses_verbalizer:
        owner = verbalizer.word_label.tolist()
        words = [w for label in verbalizer.labels for w in verbalizer.words[label]]
        recipe.update(labels=verbalizer.labels, multi_token=verbalizer.multi_token, label_words={
            label: [{"word": word, "ids": list(ids)}
                    for word, ids, li in zip(words, verbalizer.word_ids, owner, strict=True) if li == index]
            for index, label in enumerate(verbalizer.labels)})
    return recipe


def _write_recipe(tuned, folder: Path) -> None:
    """cuetune_prompt.json, and for a classifier on a decoder the runnable example.py and its
    README (resources/peft_export)."""
    recipe = prompt_recipe(tuned)
    (folder / RECIPE).write_text(json.dumps(recipe, indent=1, ensure_ascii=False), encoding="utf-8")
    if "labels" in recipe and tuned.pipe.loaded.family.answer_is_next:
        for name in ("example.py", "README.md"):
            text = files("cuetune.resources").joinpath("peft_export", name).read_text(encoding="utf-8")
            (folder / name).write_text(text, encoding="utf-8")


def read_peft(peft_dir: str | Path) -> tuple[dict, dict]:
    """(adapter_config as a dict, tensors) from a PEFT adapter folder, with named errors."""
    folder = Path(peft_dir)
    cfg_path, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    if not cfg_path.is_file():
        raise ArtifactError(f"{cfg_path}: missing; {folder} is not a PEFT adapter folder")
    if not weights.is_file():
        hint = (" (adapter_model.bin is a pickle, which cuetune does not load; re-save it with "
                "safe_serialization=True)") if (folder / "adapter_model.bin").exists() else ""
        raise ArtifactError(f"{weights}: missing{hint}")
    try:
        peft_config = json.loads(cfg_path.read_text(encoding="utf-8"))
        tensors = load_file(str(weights))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{cfg_path}: not valid JSON ({exc})") from None
    except SafetensorError as exc:
        raise ArtifactError(f"{weights}: not a valid safetensors file ({exc})") from None
    if not isinstance(peft_config, dict) or "peft_type" not in peft_config:
        raise ArtifactError(f"{cfg_path}: field 'peft_type' missing")
    return peft_config, tensors


def importer_for(peft_type: str) -> type:
    for cls in methods.REGISTRY.values():
        if peft_type in cls.peft_imports:
            return cls
    known = sorted({t for c in methods.REGISTRY.values() for t in c.peft_imports})
    raise ArtifactError(f"PEFT adapter type {peft_type!r} cannot be imported; supported: {known}")


def import_peft(peft_dir: str | Path, config=None) -> Manifest:
    """Make a cuetune run from a PEFT adapter: the config gives model, data, template and labels;
    the method comes from the adapter. Evaluates on dev/test when the config has them."""
    peft_config, tensors = read_peft(peft_dir)
    method_cls = importer_for(peft_config["peft_type"])
    fields, state = method_cls.peft_import(peft_config, tensors)
    cfg = as_config(config)
    try:
        cfg = variant(cfg, method=fields)
    except Exception as exc:  # pydantic: the adapter's settings do not fit
        raise ConfigError(f"{peft_dir}: adapter settings {fields} are not valid here ({exc})") from None
    splits = load_splits(cfg.data)
    run_dir = prepare_run_dir(cfg.output_dir)
    pipe = build(cfg, splits.labels)
    _check_layout(pipe.method)
    try:
        pipe.method.load_adapter_state(state)
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"{Path(peft_dir) / PEFT_WEIGHTS}: does not fit {cfg.model.name} with "
                            f"template {cfg.prompt.template!r}: {exc}") from None
    enc = {name: pipe.encoder.encode(getattr(splits, name), f"{name} examples") for name in ("dev", "test")}
    return finish_run(run_dir, cfg, pipe, splits, enc, {}, None, [],
                          ImportRecord(peft_dir=str(peft_dir), peft_type=peft_config["peft_type"]))


def _check_layout(method) -> None:
    """A prompt adapter must sit where PEFT put it; `peft_export` checks the same layout."""
    try:
        method.peft_export()
    except ArtifactError as exc:
        raise ArtifactError(str(exc).replace("PEFT export", "PEFT import")) from None
