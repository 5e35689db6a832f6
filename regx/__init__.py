"""regx: a command-line experiment runner for training image-classification CNNs."""

from regx.__about__ import __version__

__all__ = ["__version__", "load"]


def load(run_dir, checkpoint: str = "best", device: str = "auto"):
    """A run's model (eval mode), class names and preprocessing: `.predict(images)`, `.model`,
    `.preprocess`, `.classes` (see regx.predict). Imports torch only when called."""
    from regx.predict import load as _load

    return _load(run_dir, checkpoint=checkpoint, device=device)
