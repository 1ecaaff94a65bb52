"""Reinforcement-learning search over discrete prompts, in the spirit of RLPrompt (Deng et al.
2022), and the two searches it is measured against at an equal number of scorings.

Policy: the frozen base model reads the prompt written so far (from a fixed start token) and a
small MLP, added to its last hidden state before the output head, gives the next token's
logits over the search vocabulary. The MLP's last layer starts at zero, so the untrained policy
is the model's own next-token distribution (the `sampled` searcher keeps it so); only the MLP
learns.

Each step: B training examples and S prompts sampled from the policy. Reward per (prompt,
input): the gold label's probability less the best wrong label's. RLPrompt's input-specific
normalisation: each input's rewards are z-scored over the S prompts, so easy and hard inputs
weigh alike; a prompt's advantage is its mean z-score. Loss: REINFORCE with that advantage,
minus an entropy bonus.

Every `eval_every` steps the best prompt by training reward since the last such point is
scored on dev and logged, and the searcher's state (policy, optimiser, random generator) is
saved, so an interrupted search resumes where it stood and gives the same prompts.
`random` draws tokens uniformly; `sampled` draws from the untrained policy; both follow the
same schedule and budget.
"""

from __future__ import annotations

import torch
from torch import nn

from cuetune.errors import ConfigError
from cuetune.search.candidates import Candidate
from cuetune.search.stage import Stage
from cuetune.search.tokens import TokenPrompts, reward, search_vocab, training_steps


class Policy(nn.Module):
    def __init__(self, loaded, vocab: torch.Tensor, hidden: int, start_id: int, seed: int):
        super().__init__()
        self.base, self.family = loaded.model, loaded.family
        size = self.base.get_input_embeddings().weight.size(1)
        with torch.random.fork_rng(devices=[]):  # seeded, and the global generator left as it was
            torch.manual_seed(seed)
            self.mlp = nn.Sequential(nn.Linear(size, hidden), nn.GELU(), nn.Linear(hidden, size))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.register_buffer("vocab", vocab, persistent=False)
        self.start_id = start_id

    def logits(self, prefix: torch.Tensor) -> torch.Tensor:
        """Written tokens [S, t] (vocab positions) -> next-token logits [S, t + 1, V'] after the
        start token and each written token."""
        ids = torch.cat([prefix.new_full((prefix.size(0), 1), self.start_id), self.vocab[prefix]], 1)
        with torch.no_grad():
            reader = self.base.get_encoder() if self.base.config.is_encoder_decoder else self.base.base_model
            hidden = reader(input_ids=ids).last_hidden_state.float()  # [S, t+1, H]
        hidden = hidden + self.mlp(hidden)
        flat = self.family.token_logits(self.base, hidden.reshape(-1, hidden.size(-1)), self.vocab)
        return flat.view(*hidden.shape[:2], -1)  # [S, t+1, V']

    @torch.no_grad()
    def sample(self, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
        """[count, length] vocab positions, each drawn from the policy given the ones before."""
        out = torch.zeros(count, 0, dtype=torch.long, device=self.vocab.device)
        for _ in range(length):
            probs = self.logits(out)[:, -1].softmax(-1).cpu()
            out = torch.cat([out, torch.multinomial(probs, 1, generator=gen).to(out.device)], 1)
        return out

    def log_prob(self, written: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log pi over each prompt's tokens [S], and the mean per-step entropy [S]."""
        logp = self.logits(written[:, :-1]).log_softmax(-1)  # [S, n, V']
        picked = logp.gather(2, written[..., None]).squeeze(2).sum(1)
        entropy = -(logp.exp() * logp).sum(-1).mean(1)
        return picked, entropy

    @torch.no_grad()
    def greedy(self, length: int) -> torch.Tensor:
        out = torch.zeros(1, 0, dtype=torch.long, device=self.vocab.device)
        for _ in range(length):
            out = torch.cat([out, self.logits(out)[:, -1].argmax(-1, keepdim=True)], 1)
        return out


def run_rl(stage: Stage, best: Candidate) -> None:
    _loop(stage, best, stage.settings.rl, mode="rl")


def run_random(stage: Stage, best: Candidate) -> None:
    _loop(stage, best, stage.settings.random, mode="random")


def run_sampled(stage: Stage, best: Candidate) -> None:
    _loop(stage, best, stage.settings.sampled, mode="sampled")


def _loop(stage: Stage, best: Candidate, settings, mode: str) -> None:
    prompts = TokenPrompts(stage, best, settings.num_tokens, settings.position)
    vocab = search_vocab(prompts.tok, settings.vocab_top).to(prompts.model.device)
    if mode == "sampled" and not prompts.family.answer_is_next:
        raise ConfigError("search.searchers: 'sampled' draws prompts from the model's own next-token "
                          "distribution, which a masked or encoder-decoder model does not give; use "
                          "'random' as the baseline for RL there")
    tok = prompts.tok
    start = next(t for t in (tok.bos_token_id, tok.cls_token_id, tok.eos_token_id, tok.pad_token_id)
                 if t is not None)
    policy = Policy(prompts.loaded, vocab, getattr(settings, "hidden", 16), start, stage.seed)
    policy = policy.to(prompts.model.device)
    opt = torch.optim.AdamW(policy.mlp.parameters(), lr=getattr(settings, "lr", 1e-3))
    gen = torch.Generator().manual_seed(stage.seed)
    state = stage.load_state(policy.mlp, opt, gen) or {"step": 0, "best": None, "reward_sum": 0.0, "n": 0}
    for step, batch, gold in training_steps(stage, prompts, settings, gen, state["step"]):
        if mode == "random":
            written = torch.randint(len(vocab), (settings.samples, settings.num_tokens), generator=gen)
        else:
            written = policy.sample(settings.samples, settings.num_tokens, gen)
        scores = reward(prompts.label_logprobs(vocab[written.to(vocab.device)], batch).float().cpu(), gold)
        stage.scorer.scorings += scores.numel()
        if mode == "rl":
            z = (scores - scores.mean(0)) / (scores.std(0, unbiased=False) + 1e-6)  # per input
            advantage = z.mean(1).to(vocab.device)  # [S]
            logp, entropy = policy.log_prob(written.to(vocab.device))
            loss = -(advantage * logp).mean() - settings.entropy * entropy.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        mean = scores.mean(1)  # [S]
        state["reward_sum"], state["n"] = state["reward_sum"] + mean.sum().item(), state["n"] + len(mean)
        top = int(mean.argmax())
        if state["best"] is None or mean[top].item() > state["best"][1]:
            state["best"] = (vocab[written[top].to(vocab.device)].tolist(), mean[top].item())
        state["step"] = step
        if step % settings.eval_every == 0 or step == settings.steps:
            ids, train_reward = state["best"]
            sampled = state["reward_sum"] / max(state["n"], 1)  # is the policy learning?
            stage.consider(prompts.text(ids), f"{mode}: best sampled since last check", step,
                           {"train_reward": round(train_reward, 4), "mean_sampled_reward": round(sampled, 4),
                            "tokens": ids}, tick=False)
            state.update(best=None, reward_sum=0.0, n=0)
            stage.save_state(state, policy.mlp.state_dict(), opt, gen)
        stage.advance()
    if mode == "rl":
        ids = vocab[policy.greedy(settings.num_tokens)[0]].tolist()
        stage.consider(prompts.text(ids), "rl: the trained policy's greedy prompt", settings.steps,
                       {"tokens": ids}, tick=False)
