from .base import LABS, Result
