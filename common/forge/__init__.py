"""What the forge integrations (Forgejo/Gitea and GitHub) share. Import the submodules:

- the skeleton of an integration: `config` (`IntegrationConfig`, `InboxSettings`), `main`
  (`EntryPoint` and the command), `service` (`IntegrationService`, the lifecycle), `events`
  (`Ignored`, `Published`, `parse_model`);
- `inbox`: the webhook inbox (`receive` stores a verified delivery in one statement) and its
  `InboxWorker`; `inbox_cli`: the `inbox` command listing and retrying deliveries;
- `cache`: `CachedReader`, workflow files remembered by (repository, commit, path);
- `signature`: HMAC-SHA256 webhook signatures, constant-time (`verify_forgejo`, `verify_github`);
- `migrate`: numbered SQL migrations of the integrations' tables; `open_pool` connects and
  applies them;
- `deliveries`: `DeliveryLog`, the persisted set of handled manual run request ids;
- `outbox`: `Outbox` + `OutboxWorker`, status updates kept in PostgreSQL until the forge
  accepted them, in `sequence` order per job;
- `policy`: `RunCandidate` -> `RunRequest` (fork/trust policy, workflow fetched at the right
  ref, `on` trigger filtering) through a forge's `ForgeReader`;
- `identity`: `repository_identity`, the one `RepositoryIdentity` a webhook body names, which
  decides both the secret (or installation) and the run's repository;
- `webhook`: the Starlette edge (`webhook_app`, `read_body` within `BodyLimits`, `parse_json`,
  `answer`);
- `errors`: `ForgeApiError` (with `retryable`) and `WebhookRejected` (with the HTTP status);
- `commands`: `/solstice approve [SHA]` in a comment; `approval`: who may approve on the forge
  and the `RunApproval` published for the orchestrators;
- `credentials`: the internal endpoint orchestrators ask for a job's checkout credential.
"""
