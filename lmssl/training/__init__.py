"""Training: prepare once (prepare.py), then a loop that fits on a screen (loop.py) asking an evaluator, a
checkpointer and a logger when to act; one TrainState (state.py) saved and restored whole."""
