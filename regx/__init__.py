"""regx: a command-line experiment runner for training image-classification CNNs."""

__version__ = "0.1.0"
