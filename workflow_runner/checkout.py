"""Check out the job's exact commit into the workspace.

`git init` + a depth-1 fetch of the commit itself (servers speaking protocol v2, and GitHub,
Forgejo and Gitea, allow that), falling back to fetching the ref when the server refuses a
bare commit id. Credentials travel as an `Authorization` header in git's environment config
(`GIT_CONFIG_COUNT`), never on a command line, in `.git/config` or in a log line.
"""
from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common.masking import SecretMasker
from protos import runner_pb2
from workflow_runner.logs import NO_STEP, LogShipper
from workflow_runner.process import Ending, ProcessGroups


@dataclass(frozen=True)
class CheckoutResult:
    ending: Ending
    error: str = ""  # set when the checkout failed: what to tell the user

    @property
    def ok(self) -> bool:
        return self.ending is Ending.EXITED and not self.error


def redact_url(url: str) -> str:
    """The URL without any user:password part, for log lines."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def git_env(base: dict[str, str], checkout: runner_pb2.Checkout) -> dict[str, str]:
    """`base` plus what makes git non-interactive and authenticated."""
    env = dict(base, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", LC_ALL="C")
    if checkout.username or checkout.password:
        basic = base64.b64encode(f"{checkout.username}:{checkout.password}".encode()).decode()
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
    return env


async def checkout(
    spec: runner_pb2.Checkout, workspace: Path, *, base_env: dict[str, str],
    groups: ProcessGroups, shipper: LogShipper, masker: SecretMasker,
    deadline: float | None, cancel: asyncio.Event,
) -> CheckoutResult:
    """Fill `workspace` with the tree at `spec.commit` (nothing to do when preloaded, or for
    a job with no source).

    `masker` must already hold the checkout password, so git's own messages are masked too.
    """
    if spec.preloaded:
        # A preloaded tree is a copy of a working tree (`cidev run`), not a checkout: it holds
        # whatever was not committed too, and may not be a git repository at all.
        shipper.system(NO_STEP, "using the preloaded copy of the working tree ("
                       + (f"commit {spec.commit} plus any uncommitted changes)" if spec.commit
                          else "not a git repository)"))
        return CheckoutResult(Ending.EXITED)
    if not spec.repo_url and not spec.commit:
        shipper.system(NO_STEP, "no repository to check out: the workspace starts empty")
        return CheckoutResult(Ending.EXITED)
    if not spec.repo_url or not spec.commit:
        return CheckoutResult(Ending.EXITED, "the job names a repository URL without a commit, "
                                             "or a commit without a repository URL")
    env = git_env(base_env, spec)
    shipper.system(NO_STEP, f"checking out {redact_url(spec.repo_url)} at {spec.commit}")

    async def git(*args: str) -> tuple[Ending, int]:
        finished = await groups.run(["git", *args], cwd=workspace, env=env,
                                    step_index=NO_STEP, shipper=shipper, masker=masker,
                                    deadline=deadline, cancel=cancel)
        return finished.ending, finished.exit_code

    ending, code = await git("init", "-q", ".")
    if ending is Ending.EXITED and code == 0:
        ending, code = await git("fetch", "-q", "--depth", "1", "--no-tags", spec.repo_url,
                                 spec.commit)
        if ending is Ending.EXITED and code != 0 and spec.ref:
            shipper.system(NO_STEP, f"the server refused the commit id; fetching {spec.ref}")
            ending, code = await git("fetch", "-q", "--no-tags", spec.repo_url, spec.ref)
    if ending is Ending.EXITED and code == 0:
        ending, code = await git("-c", "advice.detachedHead=false", "checkout", "-q",
                                 "--detach", spec.commit)
    if ending is not Ending.EXITED:
        return CheckoutResult(ending)
    if code != 0:
        return CheckoutResult(ending, f"checkout of {redact_url(spec.repo_url)} at "
                                      f"{spec.commit} failed (git exited {code}; see the log)")
    return CheckoutResult(Ending.EXITED)
