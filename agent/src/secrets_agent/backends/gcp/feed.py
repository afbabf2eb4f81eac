"""The GCP backend's change feed: Secret Manager's Pub/Sub notifications, pulled.

A secret's topics receive ``SECRET_VERSION_ADD`` and the like, with the attributes
``eventType`` and ``secretId`` (``projects/P/secrets/S``); the body is metadata only. The feed
pulls the node's subscription (google-cloud-pubsub's async client, the backend's credentials)
and acknowledges what it has handled.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from secrets_agent.backends.gcp.channel import secure_channel
from secrets_agent.backends.gcp.errors import translate
from secrets_agent.config.validators import check_host_port, setting
from secrets_agent.errors import BackendError, DeniedError
from secrets_agent.kinds import Kind

if TYPE_CHECKING:
    from secrets_agent.backends.gcp.backend import GcpSecretManagerBackend

# What each event means for a read of the secret's configured version.
_CHANGES = frozenset(
    {
        "SECRET_VERSION_ADD",
        "SECRET_VERSION_ENABLE",
        "SECRET_VERSION_DISABLE",
        "SECRET_VERSION_DESTROY",
        "SECRET_UPDATE",
    }
)
_GONE = frozenset({"SECRET_DELETE"})
ROLE = 'role "Pub/Sub Subscriber"'  # pull and acknowledge
# SECRET_ROTATE is a reminder to rotate, not a change; TOPIC_CONFIGURED and
# SECRET_VERSION_DESTROY_SCHEDULED change nothing a read answers yet.


# Pub/Sub's rule for a subscription's name (a letter, then 2-254 of these), and its full form.
_NAME = r"[A-Za-z][A-Za-z0-9._~+%-]{2,254}"
_SUBSCRIPTION = re.compile(rf"(?:projects/[^/\s]+/subscriptions/)?{_NAME}")


def _subscription_problem(value: str) -> str | None:
    """Refused at load: a name Pub/Sub cannot have would fail every pull, later."""
    if not value:
        return "is required"
    if not _SUBSCRIPTION.fullmatch(value) or value.rpartition("/")[2].startswith("goog"):
        return "must be projects/<project>/subscriptions/<name>, or a subscription's name"
    return None


@dataclass(frozen=True, kw_only=True)
class PubSubFeedOptions(FeedOptions):
    """``[backends.feed]`` of a GCP backend: the node's Pub/Sub subscription."""

    # "projects/P/subscriptions/S", or S in the backend's project
    subscription: str = setting(check=_subscription_problem)
    api_endpoint: str = setting(
        "", check=check_host_port
    )  # host[:port]; default pubsub.googleapis.com (ca_file: the backend's)
    wait_time: float = setting(20.0, min=0.1, max=60.0)  # how long one pull may wait
    max_messages: int = setting(100, min=1, max=1000)


def parse(attributes: dict[str, str]) -> tuple[str, bool] | None:
    """(secret name, gone) for a change, None for an event that changes nothing; ValueError
    when the message is not a Secret Manager notification."""
    event, secret = attributes.get("eventType"), attributes.get("secretId")
    if not event or not secret or "/secrets/" not in secret:
        raise ValueError("not a Secret Manager notification")
    if event not in _CHANGES and event not in _GONE:
        return None
    return secret.rsplit("/secrets/", 1)[1], event in _GONE


def project_of(secret_id: str) -> str:
    """The project in ``projects/<project>/secrets/<id>``: an id, or a number."""
    head, _, project = secret_id.partition("/")
    return project.partition("/")[0] if head == "projects" else ""


def location_of(secret_id: str) -> str:
    """The location of a regional secret (``projects/P/locations/L/secrets/S``); "" for a
    global one, the only kind the backend reads."""
    parts = secret_id.split("/")
    return parts[3] if len(parts) > 4 and parts[2] == "locations" else ""


def foreign(theirs: str, project_id: str, project_number: str) -> str:
    """Why ``theirs`` is not the backend's project; "" when it is, or cannot be told.

    Projects are named by id (letters first) or by number. Notifications name the number,
    which the backend learns from its first answer without another call (Resource Manager's
    would need its own role); until then a number is not compared.
    """
    ours = project_number if theirs.isdigit() else project_id
    if project_id.isdigit():  # configured by number
        ours = project_id if theirs.isdigit() else ""
    if not theirs or not ours or theirs == ours:
        return ""
    return f"project ({theirs}; this backend's: {ours})"


class PubSubFeed(Feed):
    options: PubSubFeedOptions

    def __init__(self, backend: GcpSecretManagerBackend, options: PubSubFeedOptions) -> None:
        super().__init__(backend.name, options)
        self._backend = backend
        self.calls = ApiCalls(backend.name, backend.context.metrics, self._translate)
        self._client: Any = None
        self._subscription = ""
        self._project = ""  # the backend's project id (or number, if configured so)

    async def start(self) -> None:
        try:
            credentials, project = await asyncio.to_thread(self._backend.credentials)
        except Exception as exc:  # the backend edge: google.auth errors stop here
            raise translate(self.backend, exc, "loading credentials") from None
        o = self.options
        project = self._backend.options.project_id or project or ""
        self._project = project
        self._subscription = (
            o.subscription
            if o.subscription.startswith("projects/")
            else f"projects/{project}/subscriptions/{o.subscription}"
        )
        self._client = self._make_client(credentials)

    def _make_client(self, credentials: Any) -> Any:
        from google.pubsub_v1.services.subscriber import SubscriberAsyncClient
        from google.pubsub_v1.services.subscriber.transports import (
            SubscriberGrpcAsyncIOTransport as Transport,
        )

        host = self.options.api_endpoint or "pubsub.googleapis.com"
        ca_file = self._backend.options.ca_file  # one CA for the backend's private endpoints
        channel = secure_channel(Transport, host, credentials, ca_file, self.options.backoff_max)
        return SubscriberAsyncClient(transport=Transport(host=host, channel=channel))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.transport.close()
            self._client = None

    @property
    def round_time(self) -> float:
        return self.options.wait_time

    async def receive(self, held: Held) -> list[Message]:
        from google.api_core import exceptions as gx

        client, o = self._client, self.options

        async def pull() -> Any:
            try:
                return await client.pull(
                    subscription=self._subscription,
                    max_messages=o.max_messages,
                    timeout=o.wait_time,
                    retry=None,  # the SDK's retries a dead endpoint for a minute; ours back off
                )
            except gx.DeadlineExceeded:
                return None  # nothing arrived within the wait: an empty round

        response = await self.calls("Pull", pull)
        received = [] if response is None else response.received_messages
        return [self._message(item) for item in received]

    def _message(self, item: Any) -> Message:
        message = item.message
        attributes = dict(message.attributes)
        try:
            change = parse(attributes)
        except ValueError:
            return Message(malformed=True, receipt=item.ack_id)
        if change is None:
            return Message(receipt=item.ack_id)
        secret = attributes.get("secretId", "")
        where = foreign(project_of(secret), self._project, self._backend.project_number)
        if not where and (location := location_of(secret)):
            # A regional secret of the same name is another secret: the backend reads global ones.
            where = f"location ({location}; this backend reads global secrets)"
        if where:
            return Message(receipt=item.ack_id, foreign=where)
        name, gone = change
        at = event_time(attributes.get("timestamp"))
        if at is None and message.publish_time:
            at = message.publish_time.timestamp() or None  # unset: the epoch
        o = self._backend.options
        ids = ids_for(
            name, [k for k in Kind if o.serves(k)], named_by(o.secret_name, o.team_secret_name)
        )
        hints = tuple(Hint(kind, secret_id, None, at, gone) for kind, secret_id in ids)
        return Message(hints, receipt=item.ack_id)

    def _translate(self, backend: str, exc: BaseException, operation: str) -> BackendError:
        """Worded for Pub/Sub, naming the subscription where that is what to fix."""
        from google.api_core import exceptions as gx

        where = self._subscription
        if isinstance(exc, gx.NotFound):
            return BackendError(backend, f"Pub/Sub {operation}: {where} does not exist")
        if isinstance(exc, gx.PermissionDenied):
            reason = f"Pub/Sub denied {operation} (the identity needs {ROLE} on {where})"
            return DeniedError(backend, reason)
        return translate(backend, exc, operation, "Pub/Sub")

    async def ack(self, messages: Sequence[Message]) -> None:
        client = self._client
        ack_ids = [m.receipt for m in messages]
        timeout = self._backend.options.timeout
        await self.calls(
            "Acknowledge",
            lambda: client.acknowledge(
                subscription=self._subscription, ack_ids=ack_ids, timeout=timeout, retry=None
            ),
        )
