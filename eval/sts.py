"""python eval/sts.py CKPT [--pooling auto|cls|mean] [--sets ...] [--data-root DIR] [--batch-size B]
(same as: lmssl eval sts ...)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", "sts", *sys.argv[1:]]))
