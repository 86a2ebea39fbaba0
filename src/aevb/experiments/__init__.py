"""Table reproductions: one module per experiment, each a function of its settings that writes
its tables and figures into one folder."""
from .ssl import Settings as SSLSettings, run_ssl

__all__ = ["SSLSettings", "run_ssl"]
