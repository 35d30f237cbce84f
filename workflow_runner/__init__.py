"""The runner agent inside the VM (solstice-runner)."""
