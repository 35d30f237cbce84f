"""Generated gRPC modules for the Runner and Admin services.

The `*_pb2*.py` files are generated from the `.proto` files beside this module when the
project is installed (see `setup.py`); they are not kept in git.
"""
