"""python eval/compare.py CKPT... --data FILE --out DIR [--max-words N]  (same as: lmssl eval compare ...)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmssl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", "compare", *sys.argv[1:]]))
