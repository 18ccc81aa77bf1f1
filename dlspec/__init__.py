"""dlspec: describe a neural network in a small spec language; check, build, export, draw it."""

__version__ = "0.1.0"
