"""python eval/glue.py CKPT [TASK] [finetune.key=value ...]
Fine-tune CKPT on every GLUE task under the data root and write the GLUE table (TASK omitted or `glue`),
or on one task (a GLUE task name or a task card path). Same as: lmssl finetune CKPT glue|TASK ..."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmssl.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 2 or "=" in args[1]:  # no task given: all of GLUE
        args = args[:1] + ["glue"] + args[1:]
    sys.exit(main(["finetune", *args]))
