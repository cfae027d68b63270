"""The command-line tools: `train.py`, `generate.py` and the flag reference (layer 10)."""
