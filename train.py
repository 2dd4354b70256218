"""python train.py CONFIG [section.key=value ...]  (same as `lmssl train`).

Also the entry point for multi-process training:
    torchrun --nproc_per_node N train.py CONFIG ...               (TorchEngine, DDP)
    deepspeed train.py CONFIG train.engine=deepspeed ...          (DeepSpeedEngine)
"""
import sys

from lmssl.cli import main


def launcher_free(argv: list[str]) -> list[str]:
    """The arguments without the `--local_rank=N` the deepspeed launcher appends (LOCAL_RANK is in the env)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--local_rank":
            skip = True
        elif not arg.startswith("--local_rank="):
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main(["train", *launcher_free(sys.argv[1:])]))
