"""How lmssl touches the disk: the one atomic writer, the run lock, the metrics.jsonl format."""
