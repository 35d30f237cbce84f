"""GitHub App webhooks in, check runs out (solstice-github-integration)."""
