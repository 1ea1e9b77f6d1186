"""chanloss: channel-level losses (CC-Loss, MC-Loss) for PyTorch image classifiers."""

__version__ = "0.1.0"
