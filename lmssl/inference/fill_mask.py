"""`lmssl fill-mask`: the tokens a masked language model puts at each [MASK] of a text."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.inference import language_model
from lmssl.model.attention import AttnSpec


@torch.inference_mode()
def fill_mask(objective, tokenizer: TextTokenizer, text: str, top_k: int = 5) -> list[dict]:
    """For each [MASK] in `text`, the `top_k` tokens the masked language model puts there (each mask predicted
    with the others still masked), with their probabilities and the text with that token in place."""
    trunk, head = language_model(objective, "masked", "lmssl fill-mask")
    mask_id, cls_id, sep_id = tokenizer.mask_id, tokenizer.cls_id, tokenizer.sep_id
    mask_token = tokenizer.tokenizer.id_to_token(mask_id)
    ids = [cls_id, *tokenizer.encode_batch([text])[0], sep_id]
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        raise ConfigError(f"TEXT: no {mask_token} in {text!r}; write {mask_token} where a token is to be predicted")
    if len(ids) > trunk.cfg.max_positions and trunk.cfg.position == "learned":
        raise ConfigError(f"TEXT: {len(ids)} tokens exceed the model's {trunk.cfg.max_positions} positions")
    device = next(trunk.parameters()).device
    batch = torch.tensor([ids], device=device)
    where = batch == mask_id
    probs = F.softmax(head(trunk.forward_at(batch, AttnSpec.dense(False), where)).float(), -1)  # (masks, V)
    results = []
    for n, (position, p) in enumerate(zip(positions, probs)):
        scores, tokens = p.topk(min(top_k, p.shape[-1]))
        predictions = []
        for score, token in zip(scores.tolist(), tokens.tolist()):
            filled = ids[1:-1].copy()
            filled[position - 1] = token
            predictions.append({"token": tokenizer.tokenizer.id_to_token(token), "score": round(score, 6),
                                "sequence": tokenizer.decode(filled)})
        results.append({"mask": n, "position": position, "predictions": predictions})
    return results
