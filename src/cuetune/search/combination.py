"""The search's best few prompts as one model (`search.combine`, issue 42 item 5).

On 32 dev sentences the single best prompt is the luckiest of ~100 (dev picks sat 16-25 points
above test on SST-2 and MR); the next few are nearly as good on dev and err differently. The
combination takes the top `combine` prompts with distinct templates, each with the label words
and calibration dev chose for it, and writes them as a mixture of prompts (`methods.mixture`,
per-prompt words): under a uniform prior for a zero-shot search (weights fitted on the same 32
sentences that chose the members would fit their noise), or with a learned prior and a soft
prompt per member when the run trains soft prompts or a mixture. docs/prompts.md has what it
measured.
"""

from __future__ import annotations

import re

from cuetune.errors import ConfigError
from cuetune.search.candidates import Record
from cuetune.search.stage import best_of

COMBINES = ("zero-shot", "soft", "mixture")
"""Run methods a combination can train: the mixture is itself a prompt method, a prior over
prompts with (optionally) a soft prompt each; prefix or LoRA weights have no per-prompt form."""
_SOFT = re.compile(r"\{soft(?::\d+)?\}\s?")


def check(combine: int, method: str, multi_token: str, where: str) -> None:
    """Refuse a combination the run's method or scoring cannot take, naming `where`."""
    if combine < 2:
        return
    if method not in COMBINES:
        raise ConfigError(f"{where}: a combination of prompts trains as method mixture (a prior over "
                          f"the prompts, a soft prompt each), which method {method} has no form of; "
                          f"use combine: 1 with {method}, or method {', '.join(COMBINES)}")
    if multi_token != "mean":
        raise ConfigError(f"{where}: combined prompts score their own label words by their tokens' "
                          f"mean; prompt.multi_token is {multi_token} (use mean, or combine: 1)")


def noise(dev: float, n: int) -> float:
    """One standard error of a dev accuracy `dev` on `n` examples (p clipped to [1/n, 1 - 1/n],
    so a perfect score on 12 sentences is not certain)."""
    p = min(max(dev, 1 / n), 1 - 1 / n)
    return (p * (1 - p) / n) ** 0.5


def members(records: list[Record], n: int, n_dev: int) -> list[Record]:
    """The top `n` records by dev with distinct templates (each template's best words and
    calibration) that score within one standard error of the best (`noise`, on `n_dev`
    examples: a much weaker prompt would pull a good one down), passing the label-word bar as
    `best_of` does; members share the top one's chat wrapping, instruction and inputs, and
    carry no demonstrations (a mixture renders none)."""
    ok = [r for r in records if not ("needs" in r.extra and r.dev <= r.extra["needs"])
          and r.candidate.demos is None]
    top = best_of(ok)
    if top is None:
        return []
    pair = "{text_pair}" in top.candidate.template
    floor = top.dev - noise(top.dev, n_dev)
    order = sorted((i for i in range(len(ok)) if ok[i].dev >= floor), key=lambda i: (-ok[i].dev, i))
    out, seen = [], set()
    for i in order:
        c = ok[i].candidate
        if (c.chat, c.instruction, "{text_pair}" in c.template) != (top.candidate.chat,
                                                                   top.candidate.instruction, pair):
            continue
        template = _SOFT.sub("", c.template).strip()
        if template in seen:
            continue
        seen.add(template)
        out.append(ok[i])
        if len(out) == n:
            break
    return out


def sections(method: dict, prompts: list[dict], soft_tokens: int | None) -> tuple[dict, dict]:
    """(prompt, method) sections that train the combination of the members' prompt sections,
    from the run's method section as written (`soft_tokens`: the soft method's token count,
    when the run trains soft prompts)."""
    hard = method.get("name", "zero-shot") == "zero-shot"
    entries = []
    for p in prompts:
        entries.append({"template": _SOFT.sub("", p["template"]).strip() if hard else p["template"],
                        "verbalizer": p["verbalizer"], "calibrate": p["calibrate"]})
    first = prompts[0]
    prompt = {**first, "template": entries[0]["template"], "calibrate": False}
    if hard:
        return prompt, {"name": "mixture", "prompts": entries, "prior": "uniform"}
    if method["name"] == "soft":
        kept = {k: v for k, v in method.items() if k in ("init", "init_words", "vocab_top", "seed")}
        if any(not _SOFT.search(e["template"]) for e in entries):  # else their {soft:N} set it
            kept["num_tokens"] = soft_tokens or 20
        return prompt, {"name": "mixture", "prompts": entries, **kept}
    return prompt, {**method, "prompts": entries}
