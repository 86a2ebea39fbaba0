"""aevb: variational autoencoders by Auto-Encoding Variational Bayes (Kingma & Welling, 2013)."""
__version__ = "0.1.0"

from .api import load  # noqa: E402
from .config import Config  # noqa: E402
from .objectives import Estimator  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["Config", "Estimator", "load", "train", "__version__"]
