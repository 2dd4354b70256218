"""Model I/O: lmssl's own checkpoint format (format.py) and the one opener of any model directory a user names
(model_dir.py)."""
