"""python eval/perplexity.py CKPT FILE [--max-length L] [--stride S] [--batch-size B] [--max-words N]
(same as: lmssl eval ppl ...)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", "ppl", *sys.argv[1:]]))
