"""What every CPU benchmark reports beside its speed: the machine's measured matmul peak (so a share of it
compares across machines) and the peak resident memory of each side, measured in a child process of its own."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import torch

PEAK_SIZE = 2048  # square matmul used to measure the peak: large enough to run at the BLAS library's best


def hf_model(cfg, tokenizer):
    """The transformers model (random weights, SDPA attention) that `lmssl export` of a `cfg` model becomes: built
    from the config.json the export writes, so its shape cannot drift from ours."""
    import transformers

    from lmssl.interop.hf.export import export_config

    config = transformers.AutoConfig.for_model(**export_config(cfg, tokenizer))
    auto = transformers.AutoModelForCausalLM if cfg.objective.name == "clm" else transformers.AutoModelForMaskedLM
    return auto.from_config(config, attn_implementation="sdpa")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def matmul_peak_gflops(dtype: str, repeats: int = 15) -> float:
    """Best-of-`repeats` GFLOP/s of a PEAK_SIZE^3 matmul on the CPU in `dtype` (fp32, or bf16 inputs as autocast
    gives them to the matmul): the ceiling the benchmark's share is measured against, from the same run."""
    n = PEAK_SIZE
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=torch_dtype), torch.randn(n, n, dtype=torch_dtype)
    a @ b  # warm-up (threads, packing buffers)
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb(argv: list[str]) -> float:
    """Peak resident memory (MB) of `python argv...` run as a child that ends by printing `own_peak_rss_mb()` as
    its last stdout line: each side of a comparison is measured alone, whatever the parent holds."""
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def own_peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM, MB). Not getrusage's ru_maxrss: Linux carries that over
    from the parent across fork and exec, so a child of a large benchmark would report the parent's."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return round(kb / 1024, 1)


def model_flops_per_token(objective, cfg, head_fraction: float) -> dict:
    """Model FLOPs per token of a training step (PaLM, appendix B): 6 N + 12 L H T, N being the trunk's
    non-embedding parameters plus the output head's (a tied decoder counts: it is a matmul) times the fraction
    of positions the head runs on; attention's T x T scores counted in full, also when causal."""
    m, trunk = cfg.model, objective.trunk
    embeddings = {id(p) for p in trunk.embeddings.parameters()}
    trunk_matmul = sum(p.numel() for p in trunk.parameters() if id(p) not in embeddings)  # blocks, norms, embed_proj
    head_params = sum(p.numel() for p in objective.head.parameters())
    n = trunk_matmul + head_fraction * head_params
    attention = 12 * m.num_layers * m.hidden_size * cfg.data.seq_len
    return {"flops_per_token": 6 * n + attention, "n_matmul_params": round(n),
            "trunk_non_embedding_params": trunk_matmul, "head_params": head_params, "head_fraction": head_fraction,
            "attention_flops_per_token": attention}


def machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "processor": cpu_model(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()
