"""The AWS change feed end to end: moto's EventBridge rule -> SQS -> the running agent."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.aws.feed import (
    foreign,
    parse_body,
    role_account,
    secrets_manager_changes,
    ssm_changes,
)
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError
from secrets_agent.kinds import Kind
from secrets_agent.report import render
from support.feeds import eventually, feed_health, fresh, negative, value
from support.helpers import (
    RunningAgent,
    agent_config,
    body_of,
    raw_request,
    running_agent,
    status_of,
)
from support.moto_aws import REGION, MotoServer

pytestmark = pytest.mark.integration

C, V = Kind.CONNECTION, Kind.VARIABLE
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:airflow/variables/{}-AbC123"


class Bus:
    """A queue an EventBridge rule fills, as an operator would set it up."""

    def __init__(self, aws: MotoServer, source: str) -> None:
        self.aws = aws
        self.sqs, self.events = aws.client("sqs"), aws.client("events")
        self.url = self.sqs.create_queue(QueueName=f"feed-{source.replace('.', '-')}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        self.events.put_rule(Name="to-agent", EventPattern=json.dumps({"source": [source]}))
        self.events.put_targets(
            Rule="to-agent", Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}]
        )

    def put(self, source: str, detail_type: str, detail: dict[str, Any], **extra: Any) -> None:
        entry = {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail), **extra}
        answer = self.events.put_events(Entries=[entry])
        assert answer["FailedEntryCount"] == 0

    def waiting(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


def backend_toml(aws: MotoServer, kind: str, queue_url: str) -> str:
    return f"""
        [[backends]]
        name = "aws"
        type = "{kind}"
        endpoint_url = "{aws.url}"
        region = "{REGION}"
        [backends.feed]
        queue_url = "{queue_url}"
        endpoint_url = "{aws.url}"
        wait_time = 1
        key_interval = 0
        backoff_initial = 0.05
        backoff_max = 0.2
    """


def events(agent: RunningAgent, result: str) -> float:
    return agent.metric("secrets_agent_feed_events_total", feed="aws", result=result)


def test_rotation_event_makes_the_agent_serve_the_new_value(
    moto: MotoServer, short_tmp: Path
) -> None:
    moto.reset()
    bus = Bus(moto, "aws.secretsmanager")
    sm = moto.client("secretsmanager")
    sm.create_secret(Name="airflow/variables/token", SecretString="old")
    config = agent_config(
        short_tmp,
        "[cache]\nvariable_ttl = 3600\n",
        backend_toml(moto, "aws_secrets_manager", bus.url),
    )
    with running_agent(config) as agent:
        assert value(agent, V, "token") == "old"
        version = sm.put_secret_value(SecretId="airflow/variables/token", SecretString="new")
        bus.put(
            "aws.secretsmanager",
            "Secret Label Updated",
            {
                "name": "airflow/variables/token",
                "labelUpdated": "AWSCURRENT",
                "versionId": version["VersionId"],
            },
            Resources=[ARN.format("token")],
        )
        eventually(lambda: fresh(agent, V, "token") == "new")
        # Unrelated names, other services' events and garbage are counted and removed.
        bus.put("aws.secretsmanager", "Secret Label Updated", {"name": "elsewhere/x"})
        bus.sqs.send_message(QueueUrl=bus.url, MessageBody="{not json")
        bus.sqs.send_message(QueueUrl=bus.url, MessageBody=json.dumps({"source": "aws.ssm"}))
        eventually(lambda: events(agent, "ignored") >= 2 and events(agent, "malformed") >= 1)
        eventually(lambda: bus.waiting() == 0)
        assert value(agent, V, "token") == "new"
        lag = agent.metric("secrets_agent_feed_lag_seconds_count", feed="aws")
        assert lag >= 1
        ready = agent.agent.runtime.readiness()["[feed:aws]"]
        assert ready.ready and ready.detail == "ok"
        # What `secrets-agent status` says about the feed: the same state and counters.
        answer = raw_request(agent.socket_path, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        [feed] = body_of(answer)["feeds"]
        assert feed["events"] == {
            "applied": 1,
            "ignored": 2,
            "duplicate": 0,
            "malformed": 1,
            "foreign": 0,
        }
        assert (feed["name"], feed["detail"], feed["up"], feed["consumer"]) == (
            "aws",
            "ok",
            True,
            True,  # without [shared_cache] every node consumes its own queue
        )
        assert feed["received"] == 4 and feed["refetches"]["fetched"] == 1
        assert feed["last_received_at"].startswith("20")
        assert "feed aws: ok (up, consumes it); last received 20" in render(body_of(answer))

        # The queue's calls are SQS's to bill: not Secrets Manager calls made, nor priced so.
        def calls(operation: str) -> float:
            total = "secrets_agent_upstream_api_calls_total"
            return sum(
                agent.metric(total, backend="aws", operation=operation, result=result)
                for result in ("ok", "not_found")
            )

        assert calls("ReceiveMessage") >= 1 and calls("DeleteMessageBatch") >= 1
        [backend] = body_of(answer)["backends"]
        assert backend["upstream_calls"] == calls("GetSecretValue") + calls("DescribeSecret")


def foreign_event(region: str, account: str, name: str) -> str:
    """A rotation as another region's or account's bus delivers it to a shared queue."""
    arn = f"arn:aws:secretsmanager:{region}:{account}:secret:{name}-AbC123"
    event = {
        "version": "0",
        "id": "1",
        "detail-type": "Secret Label Updated",
        "source": "aws.secretsmanager",
        "account": account,
        "time": "2026-12-04T12:00:00Z",
        "region": region,
        "resources": [arn],
        "detail": {"name": name, "labelUpdated": "AWSCURRENT", "versionId": "v-elsewhere"},
    }
    return json.dumps(event)


def test_events_about_another_regions_or_accounts_secrets_are_removed_unapplied(
    moto: MotoServer, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    moto.reset()
    bus = Bus(moto, "aws.secretsmanager")
    sm = moto.client("secretsmanager")
    name, ours = "airflow/variables/token", "123456789012"  # moto's account
    sm.create_secret(Name=name, SecretString="old")
    # The role names the account the backend reads in; the region is the backend's own.
    role = f'role_arn = "arn:aws:iam::{ours}:role/agent"\nsts_endpoint_url = "{moto.url}"\n'
    table = backend_toml(moto, "aws_secrets_manager", bus.url).replace(
        "[backends.feed]", role + "[backends.feed]"
    )
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", table)
    with running_agent(config) as agent:
        assert value(agent, V, "token") == "old"
        reads = agent.metric(
            "secrets_agent_upstream_api_calls_total",
            backend="aws",
            operation="GetSecretValue",
            result="ok",
        )
        sm.put_secret_value(SecretId=name, SecretString="new")  # no event of ours says so yet
        # The same name, rotated in another region, in another account, and (CloudTrail)
        # by a call of ours on another account's secret, named by its ARN.
        bus.sqs.send_message(QueueUrl=bus.url, MessageBody=foreign_event("eu-west-1", ours, name))
        bus.sqs.send_message(
            QueueUrl=bus.url, MessageBody=foreign_event(REGION, "210987654321", name)
        )
        trail = {
            "source": "aws.secretsmanager",
            "detail-type": "AWS API Call via CloudTrail",
            "account": ours,
            "region": REGION,
            "detail": {
                "eventName": "PutSecretValue",
                "requestParameters": {
                    "secretId": f"arn:aws:secretsmanager:{REGION}:210987654321:secret:{name}"
                },
                "responseElements": {"versionId": "v9"},
            },
        }
        sns = {"Type": "Notification", "Message": json.dumps(trail)}  # through SNS fan-out
        with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.feeds"):
            bus.sqs.send_message(QueueUrl=bus.url, MessageBody=json.dumps(sns))
            eventually(lambda: events(agent, "foreign") == 3)
            eventually(lambda: bus.waiting() == 0)  # removed, never a poison loop
        assert events(agent, "applied") == 0
        assert fresh(agent, V, "token") == "old"  # still fresh: nothing of ours changed
        after = agent.metric(
            "secrets_agent_upstream_api_calls_total",
            backend="aws",
            operation="GetSecretValue",
            result="ok",
        )
        assert after == reads
        lines = [r for r in caplog.records if "another" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None  # one line per log_interval
        assert "another region (eu-west-1; this backend's: us-east-1)" in lines[0].getMessage()
        # The rule's own events (this region, this account) still apply.
        bus.put(
            "aws.secretsmanager",
            "Secret Label Updated",
            {"name": name, "labelUpdated": "AWSCURRENT"},
            Resources=[ARN.format("token")],
        )
        eventually(lambda: fresh(agent, V, "token") == "new")
        assert events(agent, "applied") == 1


def test_foreign_compares_only_what_both_sides_know() -> None:
    change = secrets_manager_changes(
        {
            "source": "aws.secretsmanager",
            "resources": ["arn:aws:secretsmanager:eu-west-1:2:secret:x-AbC123"],
            "detail": {"labelUpdated": "AWSCURRENT"},
        }
    )
    assert foreign({"region": "us-east-1"}, change, "", "") == ""  # nothing known of ours
    assert foreign({}, change, "eu-west-1", "2") == ""
    assert foreign({}, change, "us-east-1", "") == "region (eu-west-1; this backend's: us-east-1)"
    assert foreign({}, change, "eu-west-1", "1") == "account (2; this backend's: 1)"
    assert foreign({"account": "3"}, change, "", "2") == "account (3; this backend's: 2)"
    assert role_account("arn:aws:iam::123456789012:role/a/b") == "123456789012"
    assert role_account("arn:aws:iam:::role/a") == role_account("nonsense") == ""
    ssm = {
        "source": "aws.ssm",
        "detail-type": "Parameter Store Change",
        "resources": ["arn:aws:ssm:ap-south-1:1:parameter/p"],
        "detail": {"name": "p", "operation": "Update"},
    }
    assert foreign(ssm, ssm_changes(ssm), "us-east-1", "1").startswith("region (ap-south-1;")


def test_cloudtrail_delete_becomes_a_miss(moto: MotoServer, short_tmp: Path) -> None:
    moto.reset()
    bus = Bus(moto, "aws.secretsmanager")
    sm = moto.client("secretsmanager")
    created = sm.create_secret(Name="airflow/variables/gone", SecretString="here")
    config = agent_config(
        short_tmp,
        "[cache]\nvariable_ttl = 3600\n",
        backend_toml(moto, "aws_secrets_manager", bus.url),
    )
    with running_agent(config) as agent:
        assert value(agent, V, "gone") == "here"
        sm.delete_secret(SecretId="airflow/variables/gone", ForceDeleteWithoutRecovery=True)
        bus.put(
            "aws.secretsmanager",
            "AWS API Call via CloudTrail",
            {
                "eventSource": "secretsmanager.amazonaws.com",
                "eventName": "DeleteSecret",
                "requestParameters": {"secretId": created["ARN"]},
                "responseElements": {"aRN": created["ARN"]},
            },
        )
        eventually(lambda: negative(agent, V, "gone"))


def test_ssm_change_and_a_queue_that_is_down_then_back(moto: MotoServer, short_tmp: Path) -> None:
    moto.reset()
    moto.put_parameter("/airflow/variables/p", "one")
    missing = f"{moto.url}/123456789012/not-yet"
    config = agent_config(
        short_tmp, "[cache]\nvariable_ttl = 3600\n", backend_toml(moto, "aws_ssm", missing)
    )
    with running_agent(config) as agent:
        assert value(agent, V, "p") == "one"
        eventually(lambda: "failing" in feed_health(agent, "aws"))
        assert agent.agent.runtime.readiness()["aws"].ready  # the backend itself is fine
        answer = raw_request(agent.socket_path, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 200  # a detail, never a 503
        assert "failing" in body_of(answer)["backends"]["[feed:aws]"]["detail"]
        assert agent.metric("secrets_agent_feed_up", feed="aws") == 0
        assert value(agent, V, "p") == "one"  # served on its TTL meanwhile
        # Changed while the feed was down: no event will ever say so.
        moto.put_parameter("/airflow/variables/p", "two")
        sqs = moto.client("sqs")
        sqs.create_queue(QueueName="not-yet")
        eventually(lambda: agent.metric("secrets_agent_feed_up", feed="aws") == 1)
        eventually(lambda: fresh(agent, V, "p") == "two")  # revalidated after the gap
        # And an event now goes through, from the queue that appeared.
        moto.put_parameter("/airflow/variables/p", "three")
        sqs.send_message(
            QueueUrl=missing,
            MessageBody=json.dumps(
                {
                    "source": "aws.ssm",
                    "detail-type": "Parameter Store Change",
                    "time": "2026-12-04T12:00:00Z",
                    "detail": {"name": "/airflow/variables/p", "operation": "Update"},
                }
            ),
        )
        eventually(lambda: fresh(agent, V, "p") == "three")


def test_event_shapes_map_to_names() -> None:
    label = {
        "source": "aws.secretsmanager",
        "detail-type": "Secret Label Updated",
        "resources": [ARN.format("a")],
        "detail": {"labelUpdated": "AWSPENDING"},
    }
    assert secrets_manager_changes(label) == []  # not what a read answers
    label["detail"] = {"labelUpdated": "AWSCURRENT", "versionId": "v2"}
    [change] = secrets_manager_changes(label)
    assert change.names == ("airflow/variables/a",) and change.version == "v2"
    trail = {
        "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventName": "PutSecretValue",
            "requestParameters": {"secretId": "arn:aws:secretsmanager:r:1:secret:x/y"},
            "responseElements": {"arn": "arn:aws:secretsmanager:r:1:secret:x/y-Zz9Zz9"},
        },
    }
    assert secrets_manager_changes(trail)[0].names == ("x/y",)
    trail["detail"]["eventName"] = "GetSecretValue"  # type: ignore[index]
    assert secrets_manager_changes(trail) == []
    # A rotation's first step puts the new value as AWSPENDING: reads still answer AWSCURRENT
    # (re-reading would find the old version, and ask again thrice for the one named).
    pending: dict[str, Any] = {
        "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventName": "PutSecretValue",
            "requestParameters": {"secretId": "x/y", "versionStages": ["AWSPENDING"]},
            "responseElements": {"versionId": "v3", "versionStages": ["AWSPENDING"]},
        },
    }
    assert secrets_manager_changes(pending) == []
    pending["detail"]["requestParameters"]["versionStages"] = ["AWSCURRENT", "mine"]
    pending["detail"]["responseElements"]["versionStages"] = ["AWSCURRENT", "mine"]
    assert secrets_manager_changes(pending)[0].version == "v3"
    del pending["detail"]["requestParameters"]["versionStages"]
    del pending["detail"]["responseElements"]["versionStages"]
    assert secrets_manager_changes(pending)[0].version == "v3"  # the default: AWSCURRENT
    ssm = {"source": "aws.ssm", "detail-type": "Parameter Store Change", "detail": {"name": "n"}}
    assert ssm_changes(ssm)[0].names == ("n", "/n")
    wrapped = json.dumps({"Type": "Notification", "Message": json.dumps(ssm)})
    assert parse_body(wrapped) == ssm
    with pytest.raises(ValueError, match="no secret name"):
        secrets_manager_changes({"source": "aws.secretsmanager", "detail": {}})


def test_the_services_own_events_and_a_creation_map_to_names() -> None:
    # A rule on the source alone ({"source": ["aws.secretsmanager"]}) also sends what Secrets
    # Manager records itself: a rotation's end is a change, its other steps are nothing to do;
    # neither is an unparseable message (they were counted and logged as such).
    service: dict[str, Any] = {
        "source": "aws.secretsmanager",
        "detail-type": "AWS Service Event via CloudTrail",
        "region": "r",
        "resources": [],
        "detail": {
            "eventName": "RotationSucceeded",
            "eventType": "AwsServiceEvent",
            "requestParameters": None,
            "responseElements": None,
            "additionalEventData": {"SecretId": "arn:aws:secretsmanager:r:1:secret:x/y-Zz9Zz9"},
        },
    }
    [change] = secrets_manager_changes(service)
    assert change.names[0] == "x/y" and change.scopes == (("r", "1"),) and not change.gone
    steps = ("RotationStarted", "RotationFailed", "RotationAbandoned", "StartSecretVersionDelete")
    for step in steps:
        service["detail"]["eventName"] = step
        assert secrets_manager_changes(service) == []
    assert secrets_manager_changes({**service, "detail-type": "Some Future Event"}) == []
    # A secret created where the node holds a miss (a lookup before it existed).
    created = {
        "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventName": "CreateSecret",
            "requestParameters": {"name": "x/y", "clientRequestToken": "t"},
            "responseElements": {
                "arn": "arn:aws:secretsmanager:r:1:secret:x/y-Zz9Zz9",
                "name": "x/y",
                "versionId": "v1",
            },
        },
    }
    [change] = secrets_manager_changes(created)
    assert change.names == ("x/y",) and change.version == "v1"


def test_feed_table_is_validated_at_load(tmp_path: Path) -> None:
    raw = {
        "backends": [
            {
                "name": "aws",
                "type": "aws_ssm",
                "feed": {"queue_url": "sqs.example", "wait_time": 30, "bogus": 1},
            }
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path)
    assert caught.value.problems == [
        "backends[0].feed.bogus: unknown key",
        "backends[0].feed.queue_url: must start with http:// or https://",
        "backends[0].feed.wait_time: must be <= 20, got 30",
    ]
    # No short polling: an empty queue would answer at once, round after round, without end.
    raw["backends"][0]["feed"] = {"queue_url": "https://sqs.example/1/q", "wait_time": 0}
    with pytest.raises(ConfigError, match=r"feed\.wait_time: must be >= 1, got 0"):
        parse_config(raw, tmp_path)
    raw["backends"][0]["feed"] = {"queue_url": "sqs.example"}
    with pytest.raises(ConfigError, match="queue_url: must start with http"):
        parse_config(raw, tmp_path)
    raw["backends"][0]["feed"] = {}
    with pytest.raises(ConfigError, match=r"feed\.queue_url: is required"):
        parse_config(raw, tmp_path)
