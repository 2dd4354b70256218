"""`lmssl generate`: a causal model continues a prompt, sampling with a key/value cache."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.inference import language_model
from lmssl.model.attention import AttnSpec
from lmssl.model.transformer import KVCache


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 50  # tokens to add (fewer when the end-of-text token comes first)
    temperature: float = 1.0  # divides the logits; 0 = greedy (the most likely token every time)
    top_k: int = 0  # sample among the k most likely tokens only (0 = all)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens whose probability reaches p (1 = all)
    seed: int = 0  # the sampling generator's seed: the same seed, the same samples
    stop_at_eos: bool = True  # stop a sample at the end-of-text token
    repetition_penalty: float = 1.0  # HF's CTRL penalty on tokens already in the context (1 = none, >1 = fewer repeats)
    stop: tuple[str, ...] = ()  # stop strings: a sample ends when its text contains one, cut before it


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) logits with everything outside the top-k / the top-p nucleus set to -inf (the best always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)  # mass of the better tokens
        drop = before >= top_p  # a token goes when the better ones already reach p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def penalize_repetition(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """(B, V) logits with each token present in its row of `context` (B, T) made less likely, as transformers'
    RepetitionPenaltyLogitsProcessor does (Keskar et al. 2019, CTRL): divided by `penalty` if positive, multiplied
    if negative."""
    if penalty == 1.0:
        return logits
    seen = logits.gather(-1, context)  # (B, T)
    return logits.scatter(-1, context, torch.where(seen < 0, seen * penalty, seen / penalty))


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """`text` up to the first stop string it contains, or None when it holds none."""
    found = [text.index(s) for s in stop if s in text]
    return text[:min(found)] if found else None


@torch.inference_mode()
def generate(objective, tokenizer: TextTokenizer, prompt: str, sampling: Sampling, num_samples: int = 1,
             use_cache: bool = True) -> list[dict]:
    """`num_samples` continuations of `prompt`, each a dict (text, tokens, finish: eos | stop | length). The prompt
    follows the end-of-text token, as every training document did; the context is capped at the model's
    learned positions. A sample that reaches a stop string ends there (finish: stop) and its text is cut before
    it; `tokens` counts the tokens it drew."""
    trunk, head = language_model(objective, "causal", "lmssl generate")
    eos = objective.packing_ids(tokenizer)[0]
    context = [eos, *tokenizer.encode_batch([prompt])[0]]
    cfg = trunk.cfg
    room = cfg.max_positions - len(context) if cfg.position == "learned" else sampling.max_new_tokens
    if room <= 0:
        raise ConfigError(f"PROMPT: {len(context) - 1} tokens leave no room in the model's {cfg.max_positions} "
                          f"positions; shorten it")
    steps = min(sampling.max_new_tokens, room)
    device = next(trunk.parameters()).device
    rng = torch.Generator(device=device).manual_seed(sampling.seed)
    ids = torch.tensor([context] * num_samples, device=device)  # (B, T)
    cache = KVCache.empty(len(trunk.layers)) if use_cache else None
    new, done = ids[:, :0], torch.zeros(num_samples, dtype=torch.bool, device=device)
    stopped: dict[int, tuple[str, int]] = {}  # sample -> (its text cut before the stop string, tokens drawn)

    def shown(row: list[int]) -> list[int]:  # the tokens a sample's text is made of
        return row[:row.index(eos)] if sampling.stop_at_eos and eos in row else row
    started = time.perf_counter()
    for _ in range(steps):
        if cache is not None:  # the prompt once, then one position per token
            hidden = trunk.forward_cached(ids if cache.length == 0 else new[:, -1:], cache)[:, -1]
        else:  # the whole sequence every time: what the cache saves
            hidden = trunk(torch.cat([ids, new], 1), AttnSpec.dense(True))[:, -1]
        logits = penalize_repetition(head(hidden).float(), torch.cat([ids, new], 1), sampling.repetition_penalty)
        if sampling.temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=rng).squeeze(1)
        token = torch.where(done, torch.full_like(token, eos), token)  # finished samples only pad
        new = torch.cat([new, token[:, None]], 1)
        done |= token == eos if sampling.stop_at_eos else torch.zeros_like(done)
        for i in range(num_samples) if sampling.stop else ():
            if i not in stopped:  # decoded whole each time: a stop string may span tokens
                row = new[i].tolist()
                cut = cut_at_stop(tokenizer.decode(shown(row)), sampling.stop)
                if cut is not None:
                    stopped[i], done[i] = (cut, len(row)), True
        if bool(done.all()):
            break
    seconds = time.perf_counter() - started
    samples = []
    for i, row in enumerate(new.tolist()):
        if i in stopped:
            samples.append({"text": stopped[i][0], "tokens": stopped[i][1], "finish": "stop"})
            continue
        end = len(shown(row))
        samples.append({"text": tokenizer.decode(row[:end]), "tokens": end,
                        "finish": "eos" if end < len(row) else "length"})
    for s in samples:
        s["tokens_per_s"] = round(new.numel() / seconds, 1)
    return samples
