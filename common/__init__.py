"""Shared library of Solstice CI: workflow model, message schemas, config, logging, broker."""
