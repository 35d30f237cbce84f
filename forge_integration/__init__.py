"""Forgejo/Gitea webhooks in, commit statuses out (solstice-forge-integration)."""
