"""``python -m aevb`` and ``torchrun ... -m aevb train ...``: the aevb command."""
import sys

from .cli import main

sys.exit(main())
