"""Moved to glassmesh.yamlpos (the proxy's config file needs it too, and the data plane never imports
glassmesh.control); kept so that existing imports keep working."""

from glassmesh.yamlpos import compose, duplicate_keys, line_of, load, split_path

__all__ = ["compose", "duplicate_keys", "line_of", "load", "split_path"]
