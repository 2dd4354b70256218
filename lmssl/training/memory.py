"""Whether a model can be trained in the memory there is, decided before it is built: its parameters are counted on
the meta device (nothing allocated), and training needs at least 16 bytes for each (fp32 weights, gradients and
AdamW's two moments; 12 with Muon, whose matrices keep one momentum buffer; activations come on top), which a model
too large for the machine would otherwise meet as the kernel's OOM killer, without a word."""
from __future__ import annotations

import torch

from lmssl.config import Config
from lmssl.data.tokenizer import TextTokenizer
from lmssl.errors import ConfigError
from lmssl.objectives import build_objective

# per parameter and optimizer, the least training holds: fp32 weights, gradients and the optimizer's state (a lower
# bound: with Muon, embeddings, norms and biases keep AdamW's two moments, which is not counted)
TRAINING_BYTES = {"adamw": (16, "weights, gradients and AdamW's two moments"),
                  "muon": (12, "weights, gradients and Muon's momentum")}
WEIGHT_BYTES = 4  # per parameter: the fp32 weights, built in host memory before they move to a GPU


def parameter_count(cfg: Config, tokenizer: TextTokenizer) -> tuple[int, int]:
    """(all parameters, those of the vocabulary-sized matrices) of the objective `cfg` builds, without allocating."""
    with torch.device("meta"):
        objective = build_objective(cfg, tokenizer)
    unique = {id(p): p for p in objective.parameters()}.values()  # a tied output projection counts once
    vocab = sum(p.numel() for p in unique if cfg.model.vocab_size in p.shape)
    return sum(p.numel() for p in unique), vocab


def host_available() -> int:
    """Bytes of memory the process can still take: psutil's `available`, else /proc/meminfo's MemAvailable."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: nothing is refused


def gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def check_fits(cfg: Config, tokenizer: TextTokenizer, device: torch.device) -> None:
    """ConfigError naming the key that makes the model large (model.vocab_size when the vocabulary's matrices are
    most of it, else model.hidden_size) when the least memory training needs exceeds what is available: on the
    GPU for the torch engine (DeepSpeed's ZeRO may partition or offload the states), always the weights on the host."""
    params, vocab = parameter_count(cfg, tokenizer)
    key = "model.vocab_size" if 2 * vocab >= params else "model.hidden_size"
    value = getattr(cfg.model, key.split(".")[1])
    training_bytes, states = TRAINING_BYTES[cfg.train.optimizer]
    on_cpu = device.type == "cpu"
    needs = [(training_bytes if on_cpu else WEIGHT_BYTES, host_available(), "of memory is available",
              states if on_cpu else "the fp32 weights, built in host memory")]
    if device.type == "cuda" and cfg.train.engine == "torch":
        needs.append((training_bytes, torch.cuda.mem_get_info(device)[0], f"is free on {device}", states))
    for per_param, available, where, what in needs:
        if params * per_param > available:
            raise ConfigError(f"key '{key}': {value} makes a model of {params:,} parameters, which needs at least "
                              f"{gb(params * per_param)} ({what}, {per_param} bytes per parameter) but "
                              f"{gb(available)} {where}; choose a smaller model")
