"""The Azure backend's change feed: Key Vault's Event Grid events, read from a Storage queue.

An Event Grid subscription on the vault delivers ``Microsoft.KeyVault.SecretNewVersionCreated``
(and ``SecretNearExpiry``, ``SecretExpired``) to a Storage queue, one event per message, as JSON
or base64 of it, in the Event Grid or the CloudEvents schema. The feed reads the queue with
azure-storage-queue's async client and deletes what it has handled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from secrets_agent.backends.calls import ApiCalls
from secrets_agent.backends.feeds import (
    Feed,
    FeedOptions,
    Held,
    Hint,
    Message,
    event_time,
    ids_for,
    named_by,
)
from secrets_agent.config.validators import setting, url_problem
from secrets_agent.errors import BackendError, DeniedError
from secrets_agent.kinds import Kind

if TYPE_CHECKING:
    from secrets_agent.backends.azure.backend import AzureKeyVaultBackend

_PREFIX = "Microsoft.KeyVault."
_CHANGES = frozenset({"SecretNewVersionCreated", "SecretExpired"})  # NearExpiry: a reminder
STORAGE_SCOPE = "https://storage.azure.com/.default"  # what azure-storage-queue asks for
ROLE = 'role "Storage Queue Data Message Processor" on the queue'  # receive and delete


@dataclass(frozen=True, kw_only=True)
class StorageQueueFeedOptions(FeedOptions):
    """``[backends.feed]`` of an Azure backend: the Storage queue its Event Grid fills."""

    queue_url: str = setting(check=url_problem)  # https://<account>.queue.core.windows.net/<queue>
    # Default: the backend's Azure credential (role "Storage Queue Data Message Processor").
    # Or a file holding the storage account's key, for accounts without Entra ID access.
    account_key_file: str = setting("", path=True)
    poll_interval: float = setting(2.0, min=0.1, max=300.0)  # when the queue was empty
    max_messages: int = setting(32, min=1, max=32)
    visibility_timeout: int = setting(60, min=1, max=3600)  # before an unhandled one reappears

    def validate(self) -> list[tuple[str, str]]:
        problems = super().validate()
        url = urlsplit(self.queue_url)
        if url.scheme not in ("http", "https") or not url.hostname or len(url.path) < 2:
            problems.append(("queue_url", "must be https://<account>.queue.core.windows.net/<q>"))
        return problems


@dataclass(frozen=True)
class Change:
    vault: str
    name: str
    version: str | None
    at: float | None
    # Every vault the event names, lowercased: data.VaultName's, the topic's (Event Grid's
    # ``topic``, CloudEvents' ``source``: ``…/providers/Microsoft.KeyVault/vaults/<name>``)
    # and data.Id's host's (``https://<name>.vault.azure.net/secrets/…``).
    vaults: tuple[str, ...] = ()


def decode(body: str) -> dict[str, Any]:
    """One event from a queue message: JSON, or base64 of JSON (Event Grid's default)."""
    text = body.strip()
    if not text.startswith(("{", "[")):
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("neither JSON nor base64") from None
    event = json.loads(text)
    if isinstance(event, list) and len(event) == 1:
        event = event[0]
    if not isinstance(event, dict):
        raise ValueError("not an event")
    return event


def secret_change(event: dict[str, Any]) -> Change | None:
    """The secret change an event announces; None for events that change no secret's value."""
    kind = event.get("eventType") or event.get("type")  # Event Grid, or CloudEvents, schema
    data = event.get("data")
    if not isinstance(kind, str) or not isinstance(data, dict):
        raise ValueError("not an Event Grid event")
    if not kind.startswith(_PREFIX) or kind[len(_PREFIX) :] not in _CHANGES:
        return None
    name, vault = data.get("ObjectName"), data.get("VaultName")
    if not isinstance(name, str) or not isinstance(vault, str):
        raise ValueError("no secret name")
    version = data.get("Version")
    at = event_time(event.get("eventTime") or event.get("time"))
    vaults = [vault, _topic_vault(event.get("topic") or event.get("source")), _id_vault(data)]
    named = tuple(dict.fromkeys(v.lower() for v in vaults if v))
    return Change(vault.lower(), name, version if isinstance(version, str) else None, at, named)


def _topic_vault(topic: object) -> str:
    """The vault in an Event Grid topic: ``/subscriptions/…/vaults/<name>``."""
    if not isinstance(topic, str) or "/vaults/" not in topic.lower():
        return ""
    return topic[topic.lower().rindex("/vaults/") + len("/vaults/") :].split("/")[0]


def _id_vault(data: dict[str, Any]) -> str:
    """The vault in data.Id's host (the first label), unless the host is an address."""
    secret_url = data.get("Id")
    if not isinstance(secret_url, str):
        return ""
    host = urlsplit(secret_url).hostname or ""  # a malformed one: ValueError, malformed
    return "" if _is_address(host) else host.split(".")[0]


class StorageQueueFeed(Feed):
    options: StorageQueueFeedOptions

    def __init__(self, backend: AzureKeyVaultBackend, options: StorageQueueFeedOptions) -> None:
        super().__init__(backend.name, options)
        self._backend = backend
        self.calls = ApiCalls(backend.name, backend.context.metrics, self._translate)
        self._queue: Any = None
        # The vault's name: the first label of its host (my-vault.vault.azure.net); none for
        # an address (a private endpoint or a test's loopback vault), where any vault is ours.
        host = urlsplit(backend.options.vault_url).hostname or ""
        self._vault = "" if _is_address(host) else host.split(".")[0].lower()

    async def start(self) -> None:
        from azure.storage.queue.aio import QueueClient

        from secrets_agent.backends.azure.credentials import transport_kwargs

        o = self.options
        credential: Any
        if o.account_key_file:
            try:
                key = await asyncio.to_thread(_read, o.account_key_file)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                reason = f"cannot read the feed's account_key_file ({type(exc).__name__})"
                raise BackendError(self.backend, reason) from None
            credential = {"account_name": _account(o.queue_url), "account_key": key}
        else:
            # The backend's own credential object, not a second one built from its options:
            # one token cache (a Storage token is asked once, then refreshed before expiry by
            # the queue client's bearer policy), one authority, one CA.
            credential = self._backend.credential(STORAGE_SCOPE)
        # The backend's transport too: its ca_file, timeouts, retries, HTTP logging off.
        kwargs = transport_kwargs(self._backend.options)
        self._queue = QueueClient.from_queue_url(o.queue_url, credential=credential, **kwargs)

    async def close(self) -> None:
        if self._queue is not None:
            await self._queue.close()  # the credential stays open: the backend closes it
            self._queue = None

    @property
    def round_time(self) -> float:
        return self.options.poll_interval

    @property
    def poll_delay(self) -> float:
        return self.options.poll_interval

    async def receive(self, held: Held) -> list[Message]:
        queue, o = self._queue, self.options

        async def take() -> list[Any]:
            pages = queue.receive_messages(
                messages_per_page=o.max_messages, visibility_timeout=o.visibility_timeout
            )
            taken = []
            async for item in pages:
                taken.append(item)
                if len(taken) >= o.max_messages:
                    break
            return taken

        received = await self.calls.required("ReceiveMessages", take)
        if not received:
            await asyncio.sleep(o.poll_interval)  # Storage queues have no long poll
        return [self._message(item) for item in received]

    def _message(self, item: Any) -> Message:
        try:
            change = secret_change(decode(str(item.content)))
        except (ValueError, TypeError, RecursionError):
            return Message(malformed=True, receipt=item)
        if change is None:
            return Message(receipt=item)
        others = [vault for vault in change.vaults if vault != self._vault]
        if self._vault and others:
            return Message(
                receipt=item, foreign=f"vault ({others[0]}; this backend's: {self._vault})"
            )
        o = self._backend.options
        named = named_by(o.secret_name, o.team_secret_name)

        def lower(kind: Kind, secret_id: str, team: str | None) -> str | None:
            name = named(kind, secret_id, team)
            return None if name is None else name.lower()

        # Names compared as Key Vault does, without case: hints name ids in fold's form.
        kinds = [k for k in Kind if o.supports(k)]
        ids = ids_for(change.name.lower(), kinds, lower)
        hints = tuple(Hint(kind, sid, change.version, change.at) for kind, sid in ids)
        return Message(hints, receipt=item)

    def fold(self, secret_id: str) -> str:
        # Key Vault names allow no "_" and ignore case: the backend reads "A_b", "a-b" and
        # "A-B" from the same name.
        return secret_id.replace("_", self._backend.options.sep).lower()

    @property
    def folds(self) -> bool:
        return True

    def _translate(self, backend: str, exc: BaseException, operation: str) -> BackendError:
        """Key Vault's translation, worded for the queue, with Storage's error code and what
        to do about the two a misconfigured identity meets."""
        from secrets_agent.backends.azure.errors import storage_code, translate

        code = storage_code(exc)
        if code in ("AuthenticationFailed", "InvalidAuthenticationInfo"):
            used = "account key" if self.options.account_key_file else "Entra ID token"
            hint = "" if self.options.account_key_file else f"; it must be for {STORAGE_SCOPE}"
            reason = f"the Storage queue rejected the {used} for {operation} ({code}{hint})"
            return BackendError(backend, reason)
        if code == "AuthorizationPermissionMismatch":
            reason = f"the Storage queue denied {operation} ({code}; the identity needs {ROLE})"
            return DeniedError(backend, reason)
        return translate(backend, exc, operation, "the Storage queue", code)

    async def ack(self, messages: Sequence[Message]) -> None:
        queue = self._queue
        for message in messages:
            receipt = message.receipt
            await self.calls("DeleteMessage", lambda: queue.delete_message(receipt))  # noqa: B023


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _account(queue_url: str) -> str:
    """The account a queue URL names: the host's first label, or (Azurite) the path's first."""
    url = urlsplit(queue_url)
    host = url.hostname or ""
    if _is_address(host):
        return url.path.strip("/").split("/")[0]
    return host.split(".")[0]


def _is_address(host: str) -> bool:
    return host == "localhost" or host.replace(".", "").isdigit() or ":" in host
