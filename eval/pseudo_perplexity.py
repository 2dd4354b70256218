"""python eval/pseudo_perplexity.py CKPT FILE [--word-l2r] [--batch-tokens N] [--per-sentence OUT.jsonl]
(same as: lmssl eval pppl ...)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", "pppl", *sys.argv[1:]]))
