"""Gradient-guided token search, after AutoPrompt (Shin et al. 2020).

The searched tokens start as copies of one common word. Each step, on B training examples:
the gradient of the gold labels' log-likelihood with respect to the tokens' embeddings says,
to first order, how swapping token i for any vocabulary token w would change it:
(e_w - e_i) . grad_i. The `samples` best swaps at one position (positions taken in turn) are
scored exactly on the same examples, and the best replaces the current tokens if it scores
higher. Every `eval_every` steps the current prompt is scored on dev and logged, and the state
saved (resumable, as the RL searcher).
"""

from __future__ import annotations

import torch

from cuetune.search.candidates import Candidate
from cuetune.search.stage import Stage
from cuetune.search.tokens import TokenPrompts, search_vocab, training_steps


def run(stage: Stage, best: Candidate) -> None:
    settings = stage.settings.gradient
    prompts = TokenPrompts(stage, best, settings.num_tokens, settings.position)
    device = prompts.model.device
    vocab = search_vocab(prompts.tok, settings.vocab_top).to(device)
    table = prompts.embedding(vocab).detach().float()  # [V', H]
    gen = torch.Generator().manual_seed(stage.seed)
    the = prompts.tok(" the", add_special_tokens=False)["input_ids"]
    first = the[0] if len(the) == 1 and the[0] in set(vocab.tolist()) else int(vocab[0])
    state = stage.load_state(gen=gen) or {"step": 0, "ids": [first] * settings.num_tokens, "score": None}
    for step, batch, gold in training_steps(stage, prompts, settings, gen, state["step"]):
        gold = gold.to(device)
        current = torch.tensor(state["ids"], device=device)
        grad = _gradient(prompts, current, batch, gold)  # [n, H]
        pos = (step - 1) % settings.num_tokens
        gain = table @ grad[pos]  # [V']: first-order change of the log-likelihood
        swaps = vocab[gain.topk(min(settings.samples, len(vocab))).indices]
        trial = current.repeat(len(swaps) + 1, 1)
        trial[1:, pos] = swaps  # row 0: the current prompt, scored on the same batch
        logp = prompts.label_logprobs(trial, batch).float()  # [S+1, B, L]
        stage.scorer.scorings += logp.size(0) * logp.size(1)
        fit = logp.gather(2, gold.view(1, -1, 1).expand(logp.size(0), -1, 1)).squeeze(2).mean(1)
        if int(fit.argmax()) != 0:
            state["ids"] = trial[int(fit.argmax())].tolist()
        state["score"], state["step"] = fit.max().item(), step
        if step % settings.eval_every == 0 or step == settings.steps:
            stage.consider(prompts.text(state["ids"]), "gradient: current tokens", step,
                           {"train_loglik": round(state["score"], 4), "tokens": state["ids"]}, tick=False)
            stage.save_state(state, gen=gen)
        stage.advance()


def _gradient(prompts: TokenPrompts, ids: torch.Tensor, batch, gold: torch.Tensor) -> torch.Tensor:
    """d(mean gold log-probability) / d(token embeddings) [n, H]."""
    embeds = prompts.embedding(ids).detach().float()[None].requires_grad_(True)  # [1, n, H]
    with torch.enable_grad():
        logp = prompts.from_embeddings(embeds, batch)[0]  # [B, L]
        logp.gather(1, gold[:, None]).mean().backward()
    return embeds.grad[0]
