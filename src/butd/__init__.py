"""butd: bottom-up / top-down visual attention — extraction into verified feature shards, and trainers."""

__version__ = "0.1.0"
