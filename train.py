"""python train.py CONFIG [section.key=value ...]  (same as `lmssl train`)."""
import sys

from lmssl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
