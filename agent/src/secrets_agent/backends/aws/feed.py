"""The AWS backends' change feed: EventBridge events for the backend's names, read from SQS.

Secrets Manager announces ``Secret Label Updated`` (built in) and, with a CloudTrail trail,
``AWS API Call via CloudTrail`` for the calls that change a value; Parameter Store announces
``Parameter Store Change``. A rule sends them to a queue (directly, or through SNS); the feed
long-polls it with the backend's credentials and deletes what it has handled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
from secrets_agent.config.validators import check_http_url, setting, url_problem
from secrets_agent.kinds import Kind
from secrets_agent.ops.logs import RateLimited

if TYPE_CHECKING:
    from secrets_agent.backends.aws.base import AwsBackend
    from secrets_agent.backends.aws.client import AwsClient

# The calls CloudTrail records that change what GetSecretValue answers (CreateSecret: a miss
# the node holds becomes a value).
_CHANGING_CALLS = frozenset(
    {
        "CreateSecret",
        "PutSecretValue",
        "UpdateSecret",
        "UpdateSecretVersionStage",
        "DeleteSecret",
        "RestoreSecret",
    }
)
# What Secrets Manager itself records ("AWS Service Event via CloudTrail") that does: a
# rotation's end (a managed rotation's only sign). RotationStarted, RotationFailed,
# RotationAbandoned and the version-deletion events change nothing a read answers.
_SERVICE_CHANGES = frozenset({"RotationSucceeded"})
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")  # Secrets Manager's random end of every ARN


@dataclass(frozen=True, kw_only=True)
class SqsFeedOptions(FeedOptions):
    """``[backends.feed]`` of an AWS backend: the SQS queue its EventBridge rule targets."""

    queue_url: str = setting(check=url_problem)
    endpoint_url: str = setting(
        "", check=check_http_url
    )  # SQS's, e.g. a VPC endpoint; default: the region's
    # ReceiveMessage's long poll, in seconds; not 0 (short polls of an empty queue answer at
    # once: the feed would ask SQS without pause, billed per call).
    wait_time: int = setting(20, min=1, max=20)
    max_messages: int = setting(10, min=1, max=10)


Scope = tuple[str, str]  # (region, account) an event or an ARN names; "" where it does not


@dataclass(frozen=True)
class Change:
    """What one event says: the upstream names it may be about (any of them), and how; and
    where (the region and account of each ARN it names)."""

    names: tuple[str, ...]
    version: str | None = None
    gone: bool = False
    scopes: tuple[Scope, ...] = ()


def secrets_manager_changes(event: dict[str, Any]) -> list[Change]:
    """The changes a Secrets Manager event announces; [] for events about nothing we read."""
    if event.get("source") != "aws.secretsmanager":
        return []
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise ValueError("no detail")
    detail_type = event.get("detail-type")
    if detail_type == "AWS API Call via CloudTrail":
        return _cloudtrail_change(detail)
    if detail_type == "AWS Service Event via CloudTrail":
        return _service_change(detail)
    if detail_type not in (None, "Secret Label Updated"):
        return []  # another of the service's events (a rule on the source alone sends all)
    # Secret Label Updated: only the AWSCURRENT label decides what a read answers.
    label = detail.get("labelUpdated")
    labels = label if isinstance(label, list) else [label]
    if label is not None and "AWSCURRENT" not in labels:
        return []
    names = [detail["name"]] if isinstance(detail.get("name"), str) else []
    resources = event.get("resources")
    arns = resources if isinstance(resources, list) else []
    names += [name for arn in arns if (name := _arn_name(arn, full=True))]
    if not names:
        raise ValueError("no secret name")
    version = detail.get("versionId")
    return [
        Change(tuple(names), version if isinstance(version, str) else None, False, _scopes(arns))
    ]


def _cloudtrail_change(detail: dict[str, Any]) -> list[Change]:
    if detail.get("eventName") not in _CHANGING_CALLS or detail.get("errorCode"):
        return []  # a read, or a call that failed: nothing changed
    request = detail.get("requestParameters") or {}
    response = detail.get("responseElements") or {}
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise ValueError("unexpected CloudTrail shape")
    version = response.get("versionId")
    if detail["eventName"] == "PutSecretValue" and not _makes_current(request, response):
        return []  # a rotation's AWSPENDING (or another label): reads answer AWSCURRENT still
    if detail["eventName"] == "UpdateSecretVersionStage":
        if request.get("versionStage") != "AWSCURRENT":
            return []
        version = request.get("moveToVersionId")
    names: list[str] = []
    arns = [response.get("arn"), response.get("aRN"), request.get("secretId")]
    for arn in arns[:2]:  # "aRN" before February 2024
        if isinstance(arn, str) and (name := _arn_name(arn, full=True)):
            names.append(name)
    names += _id_names(request.get("secretId"))
    names += _id_names(request.get("name"))  # CreateSecret's
    if not names:
        raise ValueError("no secret name")
    gone = detail["eventName"] == "DeleteSecret"
    version = version if isinstance(version, str) else None
    return [Change(tuple(dict.fromkeys(names)), version, gone, _scopes(arns))]


def _service_change(detail: dict[str, Any]) -> list[Change]:
    """A rotation that ended well: ``additionalEventData.SecretId`` names the secret (an ARN)."""
    if detail.get("eventName") not in _SERVICE_CHANGES:
        return []
    data = detail.get("additionalEventData")
    secret_id = data.get("SecretId") if isinstance(data, dict) else None
    names = _id_names(secret_id)
    if not names:
        raise ValueError("no secret name")
    return [Change(tuple(dict.fromkeys(names)), scopes=_scopes([secret_id]))]


def _id_names(secret_id: object) -> list[str]:
    """The names a SecretId may stand for: a name, or a full or partial ARN."""
    if not isinstance(secret_id, str):
        return []
    if secret_id.startswith("arn:"):
        # A partial ARN has no random suffix, a full one has: try the name both ways.
        return [n for n in (_arn_name(secret_id, True), _arn_name(secret_id, False)) if n]
    return [secret_id]


def _makes_current(request: dict[str, Any], response: dict[str, Any]) -> bool:
    """Whether a PutSecretValue labelled its version AWSCURRENT (what it does by default)."""
    stages = request.get("versionStages") or response.get("versionStages")
    return not isinstance(stages, list) or not stages or "AWSCURRENT" in stages


def _arn_name(arn: object, full: bool) -> str | None:
    """The secret's name in ``arn:aws:secretsmanager:region:account:secret:name[-XXXXXX]``."""
    if not isinstance(arn, str):
        return None
    parts = arn.split(":", 6)
    if len(parts) != 7 or parts[2] != "secretsmanager" or parts[5] != "secret":
        return None
    return _ARN_SUFFIX.sub("", parts[6]) if full else parts[6]


def _scopes(arns: Sequence[object]) -> tuple[Scope, ...]:
    """The (region, account) of each ARN (a Secrets Manager secret's or an SSM parameter's)."""
    found = []
    for arn in arns:
        parts = arn.split(":", 5) if isinstance(arn, str) else []
        if len(parts) == 6 and parts[0] == "arn":
            found.append((parts[3], parts[4]))
    return tuple(dict.fromkeys(found))


def foreign(event: dict[str, Any], changes: Sequence[Change], region: str, account: str) -> str:
    """What in an event says it is about another region's or account's secret; "" if none.

    The envelope's ``region`` and ``account`` (EventBridge sets both), and those of every ARN
    it names (a CloudTrail call may name another account's secret by ARN). A side the
    backend does not know ("") or the event does not say is not compared.
    """
    scopes: list[Scope] = [(_text(event.get("region")), _text(event.get("account")))]
    scopes += [scope for change in changes for scope in change.scopes]
    for theirs_region, theirs_account in scopes:
        if region and theirs_region and theirs_region != region:
            return f"region ({theirs_region}; this backend's: {region})"
        if account and theirs_account and theirs_account != account:
            return f"account ({theirs_account}; this backend's: {account})"
    return ""


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def role_account(role_arn: str) -> str:
    """The account of ``arn:aws:iam::<account>:role/<name>``: where the role reads secrets."""
    parts = role_arn.split(":", 5)
    return parts[4] if len(parts) == 6 and parts[4].isdigit() else ""


def ssm_changes(event: dict[str, Any]) -> list[Change]:
    """The change a ``Parameter Store Change`` event announces; [] for anything else."""
    if event.get("source") != "aws.ssm" or event.get("detail-type") != "Parameter Store Change":
        return []
    detail = event.get("detail")
    if not isinstance(detail, dict) or not isinstance(detail.get("name"), str):
        raise ValueError("no parameter name")
    operation = detail.get("operation")
    if operation == "LabelParameterVersion":
        return []  # a label moved; the latest value (what a read answers) did not
    name = detail["name"]
    names = (name,) if name.startswith("/") else (name, "/" + name)
    resources = event.get("resources")
    scopes = _scopes(resources) if isinstance(resources, list) else ()
    return [Change(names, gone=operation == "Delete", scopes=scopes)]


_PARSERS = {"secretsmanager": secrets_manager_changes, "ssm": ssm_changes}


def parse_body(body: str) -> dict[str, Any]:
    """The EventBridge event in an SQS body, unwrapping an SNS notification around it."""
    event = json.loads(body)
    if isinstance(event, dict) and event.get("Type") == "Notification":
        event = json.loads(event["Message"])
    if not isinstance(event, dict):
        raise ValueError("not an event")
    return event


log = logging.getLogger(__name__)


class SqsFeed(Feed):
    """Long-polls the backend's queue; maps each event's names to the backend's ids."""

    options: SqsFeedOptions

    def __init__(self, backend: AwsBackend, options: SqsFeedOptions) -> None:
        super().__init__(backend.name, options)
        self._backend = backend
        self._parse = _PARSERS[backend.service]
        self._client: AwsClient | None = None
        # Where the backend reads: its region (however configured: option, environment,
        # profile), known once the client is built; its account only when role_arn names it
        # (no sts:GetCallerIdentity: one more endpoint a private network may not reach).
        self._region = ""
        self._account = role_account(backend.options.role_arn)
        self._undeleted = RateLimited(log, options.log_interval)

    async def start(self) -> None:
        from secrets_agent.backends.aws.client import AwsClient

        o = self.options
        # The backend's credentials, region and role; SQS's endpoint, and a read timeout
        # longer than the long poll.
        options = dataclasses.replace(
            self._backend.options,
            endpoint_url=o.endpoint_url,
            read_timeout=max(self._backend.options.read_timeout, o.wait_time + 10.0),
        )
        client = AwsClient(self.backend, "sqs", options, self._backend.context, track_auth=False)
        await client.start()
        self._client = client
        self._region = client.region

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def round_time(self) -> float:
        return float(self.options.wait_time)

    async def receive(self, held: Held) -> list[Message]:
        assert self._client is not None  # start() ran
        response = await self._client.api(
            "ReceiveMessage",
            QueueUrl=self.options.queue_url,
            MaxNumberOfMessages=self.options.max_messages,
            WaitTimeSeconds=self.options.wait_time,
        )
        raw = (response or {}).get("Messages", [])
        return [self._message(item) for item in raw if "ReceiptHandle" in item]

    def _message(self, item: dict[str, Any]) -> Message:
        receipt = item["ReceiptHandle"]
        try:
            event = parse_body(item.get("Body", ""))
            changes = self._parse(event)
        except (ValueError, KeyError, TypeError, RecursionError):
            return Message(malformed=True, receipt=receipt)
        where = foreign(event, changes, self._region, self._account) if changes else ""
        if where:
            return Message(receipt=receipt, foreign=where)
        at = event_time(event.get("time"))
        hints = tuple(
            Hint(kind, secret_id, change.version, at, change.gone)
            for change in changes
            for name in change.names
            for kind, secret_id in self._ids(name)
        )
        return Message(tuple(dict.fromkeys(hints)), receipt=receipt)

    def _ids(self, name: str) -> list[tuple[Kind, str]]:
        o = self._backend.options
        kinds = [kind for kind in Kind if o.serves(kind)]
        return ids_for(name, kinds, named_by(o.name_for, o.team_name_for))

    async def ack(self, messages: Sequence[Message]) -> None:
        assert self._client is not None
        entries = [
            {"Id": str(index), "ReceiptHandle": message.receipt}
            for index, message in enumerate(messages)
        ]
        failed: list[Any] = []
        for start in range(0, len(entries), 10):  # DeleteMessageBatch takes up to 10
            answer = await self._client.api(
                "DeleteMessageBatch",
                QueueUrl=self.options.queue_url,
                Entries=entries[start : start + 10],
            )
            found = (answer or {}).get("Failed")
            failed += found if isinstance(found, list) else []
        if failed:
            # Answered 200 all the same: those messages come back after their visibility
            # timeout, as duplicates (which cost no upstream read). Said, never failed on.
            codes = {
                re.sub(r"[^A-Za-z0-9._-]", "", str(entry.get("Code", "")))[:64] or "no code"
                for entry in failed
                if isinstance(entry, dict)
            }
            self._undeleted.log(
                "undeleted",
                logging.WARNING,
                "feed %r: %d of %d messages could not be removed from its queue (%s): they "
                "will be received again",
                self.backend,
                len(failed),
                len(entries),
                ", ".join(sorted(codes)) or "no code",
            )
