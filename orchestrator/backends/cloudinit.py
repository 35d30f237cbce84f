"""cloud-init NoCloud data that carries the runner bootstrap into a VM.

The same user-data serves the bhyve backend (the zone's `cloud-init` attribute names the file)
and the qemu backend (a NoCloud seed image labelled `cidata`). The runner reads
`/etc/solstice/runner.toml`, which the user-data writes before it starts `solstice-runner`.
"""
from __future__ import annotations

import json

from orchestrator.backends.base import RunnerBootstrap

RUNNER_CONFIG_PATH = "/etc/solstice/runner.toml"


def runner_toml(bootstrap: RunnerBootstrap) -> str:
    """The runner's bootstrap file. Values are JSON-quoted, which is valid TOML for strings."""
    return (
        f"orchestrator_url = {json.dumps(bootstrap.orchestrator_url)}\n"
        f"job_id = {json.dumps(bootstrap.job_id)}\n"
        f"token = {json.dumps(bootstrap.token)}\n"
    )


def user_data(bootstrap: RunnerBootstrap) -> str:
    """`#cloud-config` that writes the bootstrap (mode 0600) and starts the runner service."""
    content = json.dumps(runner_toml(bootstrap))
    return (
        "#cloud-config\n"
        "write_files:\n"
        f"  - path: {RUNNER_CONFIG_PATH}\n"
        "    permissions: '0600'\n"
        f"    content: {content}\n"
        "runcmd:\n"
        "  - [sh, -c, 'svcadm enable -s solstice/runner 2>/dev/null || systemctl start --no-block solstice-runner']\n"
    )


def meta_data(instance_name: str) -> str:
    """NoCloud meta-data: a fresh instance id per job, so cloud-init always runs."""
    return f"instance-id: {instance_name}\nlocal-hostname: {instance_name}\n"
