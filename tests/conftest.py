import os

# Tests must be deterministic and never touch a display or the network.
os.environ.setdefault("MPLBACKEND", "Agg")
