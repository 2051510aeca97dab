"""Data sections of the configs, one module per data source."""
