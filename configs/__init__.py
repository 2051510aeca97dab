"""Experiment configs: `get_config(arg=None)` each; see each docstring for its command line."""
