"""What a training run does about faults: signals (finish the step, checkpoint, exit), steps whose loss or
gradient is not finite (lmssl.engine.skip_guard), and resuming with a config that no longer
matches the checkpoint (stopped with the differing keys)."""
from __future__ import annotations

import signal
import sys
import threading

from lmssl.config import Config
from lmssl.errors import ConfigError

# keys that may change when a run is resumed: its length, cadence, where things are, how fast it runs; the engine
# keys are checked by the engine itself (a checkpoint of one engine resumes only with that engine)
RESUMABLE = {"train.max_steps", "train.max_flops", "train.max_minutes", "train.log_every", "train.save_every",
             "train.keep_checkpoints", "train.resume", "train.overwrite", "train.activation_checkpointing",
             "train.tensorboard", "train.num_threads", "train.output_dir", "train.max_skipped_steps",
             "train.engine", "train.zero_stage", "train.offload_optimizer", "train.offload_params", "train.deepspeed",
             "eval.every", "eval.max_batches", "eval.batch_size", "eval.likelihood_max_words", "eval.probe_task",
             "eval.probe_examples",
             "data.root", "data.cache_dir", "model.attention_backend", "model.init_from"}


def flat(cfg: Config) -> dict[str, object]:
    return {f"{section}.{k}": v for section, fields in cfg.to_dict().items() for k, v in fields.items()}


def check_resumable(saved: Config, cfg: Config, checkpoint) -> None:
    """ConfigError listing every key (beyond RESUMABLE) whose value differs from the checkpoint's config."""
    old, new = flat(saved), flat(cfg)
    differ = [f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in sorted(old.keys() | new.keys())
              if k not in RESUMABLE and old.get(k) != new.get(k)]
    if differ:
        raise ConfigError(f"cannot resume {checkpoint} with a different config ({'; '.join(differ)}); only its "
                          f"length, cadence and paths may change (train.max_steps, *.every, ...): put the other keys "
                          f"back, or start a new run (model.init_from={checkpoint} continues from its weights)")


def check_same_data(saved: dict, loader, corpus: str, checkpoint) -> None:
    """ConfigError when the training sequences are not those the checkpoint was trained on (its loader state holds
    their fingerprint, lmssl.data.loader; checkpoints from before it have none and are not checked)."""
    before = saved.get("loader", {}).get("data")
    if before is not None and before != loader.fingerprint():
        raise ConfigError(f"key 'data.train': {corpus} is not the corpus {checkpoint} was trained on (its tokenized "
                          f"sequences differ: reordered, edited or replaced), so the saved position in it means "
                          f"nothing; restore that corpus, or start a new run (model.init_from={checkpoint} continues "
                          f"from its weights)")


class StopSignals:
    """SIGTERM / SIGINT: the first asks the loop to stop after the current step (it then checkpoints and exits
    128 + signal); a second one exits at once (a checkpoint being written is removed, never left half-written)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            print(f"\n{signal.Signals(signum).name} again: exiting now, without a new checkpoint", file=sys.stderr)
            raise SystemExit(128 + signum)
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint (send it again to exit "
              f"at once)", file=sys.stderr)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
