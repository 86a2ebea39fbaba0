"""aevb: variational autoencoders by Auto-Encoding Variational Bayes (Kingma & Welling, 2013)."""
__version__ = "0.1.0"
