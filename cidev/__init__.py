"""The developer CLI: validate, inspect and run KDL workflows locally."""
