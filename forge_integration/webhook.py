"""The HTTP edge: `POST /webhooks/forgejo`, `POST /webhooks/gitea` and `POST /runs`.

Webhooks (only for configured sites) go to the inbox (`common.forge.inbox`): verify the
signature, classify, store, answer; the inbox worker plans and publishes the run later.
202 `accepted` (stored, its run follows); 200 `ignored` (an event that starts nothing, stored
with the reason) or `duplicate` (that delivery id was received before); 400 malformed,
unsupported, or naming its repository two ways (`common.forge.identity`), stored as
rejected; 401 signature missing, wrong, or made with another repository's secret (checked
on the raw bytes before any parsing; nothing is stored); 408 body too slow; 413 body too
large; 503 when the database cannot store it, so the forge retries.

Manual runs are planned and published in the request (a person waits for the answer):
`POST /runs` (manual trigger), `Authorization: Bearer <manual_token>`, JSON body
`{"forge": "forgejo", "repository": "owner/name", "branch": "main", "sha": optional,
"request_id": optional}`: the branch head (or `sha`) is planned like a push, with event
`manual`. Repeating a `request_id` is answered `duplicate`.
"""
from __future__ import annotations

import hmac
import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from common.broker import BrokerError
from common.forge.approval import ApprovalAsked
from common.forge.deliveries import DeliveryLog
from common.forge.errors import ForgeApiError, WebhookRejected
from common.forge.events import Ignored
from common.forge.identity import RepositoryIdentity, repository_identity
from common.forge.inbox import Inbox, Received, receive
from common.forge.policy import RunCandidate
from common.forge.signature import verify_forgejo
from common.forge.webhook import answer, parse_json, read_body
from common.messages import EventKind, Repo
from common.observability import tracer
from forge_integration.api import ForgejoApi
from forge_integration.approval import approval_asked
from forge_integration.config import ForgeIntegrationConfig, ForgeKind
from forge_integration.events import classify
from forge_integration.intake import Intake

MANUAL = "manual"
# Header prefixes per endpoint: Forgejo sends X-Forgejo-* and, for compatibility, X-Gitea-*.
HEADER_PREFIXES: dict[str, tuple[str, ...]] = {"forgejo": ("x-forgejo-", "x-gitea-"),
                                              "gitea": ("x-gitea-",)}


def _header(request: Request, forge: str, name: str) -> str | None:
    for prefix in HEADER_PREFIXES[forge]:
        value = request.headers.get(prefix + name)
        if value:
            return value
    return None


class ForgeWebhook:
    """The handlers of the webhook endpoints and of manual runs."""

    def __init__(self, config: ForgeIntegrationConfig, clients: dict[str, ForgejoApi], *,
                 inbox: Inbox, wake: Callable[[], None], deliveries: DeliveryLog,
                 intake: Intake) -> None:
        """Webhooks go to `inbox` (then `wake` the worker); manual runs are planned at once
        by `intake`, their request ids recorded in `deliveries`."""
        self.config = config
        self.clients = clients
        self.inbox = inbox
        self.wake = wake
        self.deliveries = deliveries
        self.intake = intake
        # Read once: the config does not change while the service runs.
        self._limits = config.body_limits
        self._secrets = {forge: config.candidate_secrets(forge) for forge in config.sites}

    def routes(self) -> list[Route]:
        routes = [Route(f"/webhooks/{forge}", self._endpoint(forge), methods=["POST"])
                  for forge in self.config.sites]
        routes.append(Route("/runs", self.manual_run, methods=["POST"]))
        return routes

    def _endpoint(self, forge: ForgeKind) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self.webhook(forge, request)
        return endpoint

    def _signers(self, forge: ForgeKind, request: Request, body: bytes) -> set[str]:
        """The configured secrets that sign `body` (each one is tried: no early exit)."""
        signature = _header(request, forge, "signature")
        return {secret for secret in self._secrets[forge]
                if verify_forgejo(secret, body, signature)}

    def _authorize(self, forge: ForgeKind, identity: RepositoryIdentity | None,
                   signers: set[str]) -> None:
        """401 unless the body is signed with the secret of the repository it names."""
        full_name = identity.full_name if identity else None
        secret = self.config.secret_for(forge, full_name)
        if secret is None:
            if self.config.insecure_no_signature:
                return
            raise WebhookRejected(401, f"no webhook secret configured for {full_name or 'this body'}",
                                  hint="configure the repository's webhook_secret")
        if secret not in signers:
            raise WebhookRejected(401, f"webhook signed with a secret that is not {full_name}'s",
                                  hint="each repository's webhook must use its own secret")

    async def webhook(self, forge: ForgeKind, request: Request) -> Response:
        """Verify, classify and store one delivery to `/webhooks/<forge>` (module docstring)."""
        body = await read_body(request, self._limits)
        # The raw bytes are verified before anything is parsed: an unsigned body costs one
        # HMAC per configured secret, never a parse. Which of the signers it must be depends
        # on the repository the body names, checked once it is parsed.
        signers = self._signers(forge, request, body)
        if not signers and not self.config.insecure_no_signature:
            signature = _header(request, forge, "signature")
            raise WebhookRejected(401, "webhook signature missing" if signature is None
                                  else "webhook signature does not match the body",
                                  hint="the webhook's secret on the forge must equal Solstice's")
        event = _header(request, forge, "event")
        delivery_id = _header(request, forge, "delivery")
        if not event:
            raise WebhookRejected(400, f"missing X-{forge.capitalize()}-Event header")
        if not delivery_id:
            raise WebhookRejected(400, f"missing X-{forge.capitalize()}-Delivery header")

        def classify_body() -> RunCandidate | ApprovalAsked | Ignored:
            payload = parse_json(body)
            identity = repository_identity(payload)
            self._authorize(forge, identity, signers)
            api_url = self.config.sites[forge].api_url
            # A `/solstice approve` comment: stored, its author's permission checked by the
            # worker (`forge_integration.approval`).
            asked = approval_asked(event, payload, delivery_id, identity=identity, forge=forge,
                                   api_url=api_url)
            if asked is not None:
                return asked
            return classify(event, payload, delivery_id, identity=identity, forge=forge,
                            api_url=api_url)

        with tracer(__name__).start_as_current_span("forge.webhook", attributes={
                "solstice.forge": forge, "solstice.webhook.event": event,
                "solstice.webhook.delivery": delivery_id}):
            return await receive(self.inbox, Received(forge, delivery_id, event, body),
                                 classify_body, self.wake)

    # ---- manual runs ----------------------------------------------------------------------

    def _authorize_manual(self, request: Request) -> None:
        token = self.config.manual_token.get_secret_value() if self.config.manual_token else ""
        if not token:
            raise WebhookRejected(403, "manual runs are disabled",
                                  hint="set manual_token in [forge_integration]")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise WebhookRejected(401, "missing or wrong bearer token")

    async def manual_run(self, request: Request) -> Response:
        """`POST /runs`: run a branch head (or a given commit) on demand."""
        self._authorize_manual(request)
        body = parse_json(await read_body(request, self._limits))
        if not isinstance(body, dict):
            raise WebhookRejected(400, "body must be a JSON object")
        forge, repository, branch = body.get("forge"), body.get("repository"), body.get("branch")
        if forge not in self.clients:
            raise WebhookRejected(400, f"forge must be one of {sorted(self.clients)}")
        if not isinstance(repository, str) or repository.count("/") != 1:
            raise WebhookRejected(400, "repository must be 'owner/name'")
        if not isinstance(branch, str) or not branch:
            raise WebhookRejected(400, "branch is required")
        request_id = body.get("request_id") or str(uuid.uuid4())
        sha = body.get("sha")
        client = self.clients[forge]
        try:
            if (known := await self.deliveries.seen(MANUAL, request_id)) is not None:
                return answer("duplicate", f"request {request_id} already handled: {known}")
            owner, name = repository.split("/")
            info = await client.get_repo(owner, name)
            if info is None:
                raise WebhookRejected(404, f"no repository {repository} on {forge}")
            repo = Repo(forge=forge, owner=info["owner"]["login"], name=info["name"],
                        clone_url=info["clone_url"], default_branch=info.get("default_branch") or "main",
                        api_url=client.api_url)
            sha = sha or await client.branch_head(repo, branch)
            if sha is None:
                raise WebhookRejected(404, f"no branch {branch} in {repository}")
            candidate = RunCandidate(repo, EventKind.MANUAL, sha, f"refs/heads/{branch}",
                                     request_id, branch=branch)
            outcome = await self.intake.handle(candidate)
        except ForgeApiError as exc:
            raise WebhookRejected(503, exc.message, hint=exc.hint) from exc
        except (BrokerError, ConnectionError, TimeoutError) as exc:
            raise WebhookRejected(503, f"the run could not be queued: {exc}",
                                  hint="send the request again") from exc
        if isinstance(outcome, Ignored):
            await self.deliveries.record(MANUAL, request_id, f"ignored: {outcome.reason}")
            return answer("ignored", outcome.reason)
        await self.deliveries.record(MANUAL, request_id, "published")
        plan = outcome.request
        return answer("published", status=202, request_id=plan.request_id, trusted=plan.trusted,
                      needs_approval=plan.needs_approval)
