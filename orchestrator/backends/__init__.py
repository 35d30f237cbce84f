"""VM backends, one module each behind the `VMBackend` interface in `base`."""
