"""watchd: a watch-folder daemon that publishes images and keeps their links at hand."""

__version__ = "0.1.0"
