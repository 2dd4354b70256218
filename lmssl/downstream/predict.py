"""`lmssl predict`: a fine-tuned classifier or regressor on new examples. The file is read as fine-tuning reads
its task (the card's text columns, the same strict checks; no label needed), encoded the same way, and each
example gets its label and class probabilities, or its score. A file that holds the card's label column is also
scored with the card's metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.downstream.encoding import EncodedSet, encode_texts
from lmssl.downstream.task_metrics import compute_metrics
from lmssl.downstream.tasks import TaskCard, has_labels, read_task_file
from lmssl.errors import ConfigError


@torch.no_grad()
def predict(directory: str | Path, file: str | Path, batch_size: int = 64, device: str = "auto"
            ) -> tuple[list[dict], dict | None]:
    """(one dict per example of `file`, in file order: {index, label, probabilities} or {index, score}; the card's
    metrics x 100 on the file's labels, or None when it has none)."""
    path = Path(file)
    if not path.is_file():
        raise ConfigError(f"FILE: not found: {path}")
    source = ModelDir.open_finetuned(directory)
    model, tokenizer, info = source.classifier(device), source.tokenizer, source.finetune_info
    card = TaskCard(**info["card"])
    if path.suffix.lower() in (".tsv", ".csv", ".jsonl", ".json"):
        card.format = "auto"  # the file's own suffix, which may differ from the task's files
    labelled = has_labels(card, path)
    data = read_task_file(card, path, labelled=labelled)
    ids, types = encode_texts(tokenizer, data.texts, info["causal"], info["max_length"])
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    examples = EncodedSet(ids, types, np.zeros(len(ids), dtype=np.int64), pad_id, info["causal"], model.use_types)
    order = examples.eval_order()
    logits = torch.empty(len(examples), card.num_outputs)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        logits[torch.from_numpy(rows)] = model.logits(examples.batch(rows).to(device)).float().cpu()
    if card.regression:
        records = [{"index": i, "score": float(v)} for i, v in enumerate(logits[:, 0].tolist())]
        predicted = logits[:, 0].numpy()
    else:
        probs = logits.softmax(-1)
        records = [{"index": i, "label": card.labels[int(p.argmax())],
                    "probabilities": {label: round(float(q), 6) for label, q in zip(card.labels, p)}}
                   for i, p in enumerate(probs)]
        predicted = probs.argmax(-1).numpy()
    return records, compute_metrics(card.metrics, predicted, data.targets) if labelled else None
