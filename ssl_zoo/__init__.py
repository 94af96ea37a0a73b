"""ssl-zoo: self-supervised vision pretraining with one trainer and swappable methods."""

__version__ = "0.1.0"
