"""The GCP change feed end to end: a loopback Pub/Sub Subscriber, pulled by the running agent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from secrets_agent.backends.gcp.feed import foreign, location_of, parse, project_of
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import ConfigError
from secrets_agent.kinds import Kind
from support.feeds import eventually, feed_health, fresh, negative, value
from support.gcp_server import (
    PROJECT,
    PROJECT_NUMBER,
    GrpcSecretManager,
    Store,
    TokenEndpoint,
    tls_material,
)
from support.helpers import agent_config, running_agent
from support.pubsub_server import PubSubServer

pytestmark = pytest.mark.integration

V = Kind.VARIABLE


class Google:
    """Secret Manager, its token endpoint, and the Pub/Sub subscription the node pulls."""

    def __init__(self, workdir: Path) -> None:
        key_pem, cert_pem, self.ca_file = tls_material(workdir)
        self.store = Store()
        self.secrets = GrpcSecretManager(self.store, key_pem, cert_pem)
        self.secrets.start()
        self.tokens = TokenEndpoint()
        self.key_file = self.tokens.key_file(workdir)
        self.pubsub = PubSubServer(key_pem, cert_pem)
        self.pubsub.start()

    def notify(
        self, event: str, secret: str, project: str = PROJECT, location: str | None = None
    ) -> None:
        where = f"projects/{project}" + (f"/locations/{location}" if location else "")
        self.pubsub.publish({"eventType": event, "secretId": f"{where}/secrets/{secret}"})

    def toml(self) -> str:
        return f"""
            [[backends]]
            name = "gcp"
            type = "gcp_secret_manager"
            credentials_file = "{self.key_file}"
            api_endpoint = "{self.secrets.endpoint}"
            ca_file = "{self.ca_file}"
            backoff_initial = 0.01
            backoff_max = 0.05
            retry_deadline = 0.5
            timeout = 2.0
            [backends.feed]
            subscription = "agent-node-1"
            api_endpoint = "{self.pubsub.endpoint}"
            wait_time = 1
            key_interval = 0
            backoff_initial = 0.05
            backoff_max = 0.2
        """

    def close(self) -> None:
        self.pubsub.close()
        self.secrets.close()
        self.tokens.shutdown()
        self.tokens.server_close()


@pytest.fixture
def google(tmp_path: Path) -> Iterator[Google]:
    made = Google(tmp_path)
    yield made
    made.close()


def test_notifications_rotate_delete_and_survive_an_outage(google: Google, short_tmp: Path) -> None:
    google.secrets.put("airflow-variables-token", "old")
    google.secrets.put("airflow-variables-other", "x")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", google.toml())
    with running_agent(config) as agent:
        assert value(agent, V, "token") == "old"
        assert value(agent, V, "other") == "x"
        google.secrets.put("airflow-variables-token", "new")
        google.notify("SECRET_VERSION_ADD", "airflow-variables-token")
        eventually(lambda: fresh(agent, V, "token") == "new")
        # A reminder, a name the backend does not serve, and a message that is not ours.
        google.notify("SECRET_ROTATE", "airflow-variables-token")
        google.notify("SECRET_VERSION_ADD", "unrelated-secret")
        google.pubsub.publish({"hello": "world"})
        eventually(lambda: len(google.pubsub.acked) == 4)
        events = "secrets_agent_feed_events_total"
        assert agent.metric(events, feed="gcp", result="ignored") == 2
        assert agent.metric(events, feed="gcp", result="malformed") == 1
        # SECRET_DELETE: a miss at once.
        del google.store.secrets["airflow-variables-other"]
        google.notify("SECRET_DELETE", "airflow-variables-other")
        eventually(lambda: negative(agent, V, "other"))
        # The subscription unreachable: a detail, lookups unaffected; back: revalidation.
        google.pubsub.stop()
        eventually(lambda: "failing" in feed_health(agent, "gcp"))
        assert value(agent, V, "token") == "new"
        google.secrets.put("airflow-variables-token", "newer")  # its event is lost
        google.pubsub.start()
        eventually(lambda: fresh(agent, V, "token") == "newer")
        assert feed_health(agent, "gcp") == "ok"


def test_another_projects_notifications_are_removed_unapplied(
    google: Google, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    google.secrets.put("airflow-variables-token", "old")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", google.toml())
    with running_agent(config) as agent:
        # Before any answer the backend's number is unknown: another number is not judged.
        google.notify("SECRET_VERSION_ADD", "airflow-variables-nothing-held", "111111111111")
        eventually(lambda: len(google.pubsub.acked) == 1)
        assert value(agent, V, "token") == "old"  # the answer names the project's number
        reads = google.store.calls["AccessSecretVersion"]
        google.secrets.put("airflow-variables-token", "new")  # none of ours says so yet
        with caplog.at_level(logging.WARNING, logger="secrets_agent.lookup.feeds"):
            # A topic several projects publish to: the same name, another project's secret,
            # by number (as notifications name projects) and by id.
            google.notify("SECRET_VERSION_ADD", "airflow-variables-token", "111111111111")
            google.notify("SECRET_VERSION_ADD", "airflow-variables-token", "other-project")
            # Our project, but a regional secret of the same name: not the global one we read.
            google.notify(
                "SECRET_VERSION_ADD", "airflow-variables-token", PROJECT_NUMBER, "europe-west1"
            )
            eventually(lambda: len(google.pubsub.acked) == 4)
        events = "secrets_agent_feed_events_total"
        assert agent.metric(events, feed="gcp", result="foreign") == 3
        assert fresh(agent, V, "token") == "old"
        assert google.store.calls["AccessSecretVersion"] == reads  # no read for theirs
        [line] = [r for r in caplog.records if "another" in r.getMessage()]
        assert "another project (111111111111; this backend's: 380529160364)" in line.getMessage()
        assert line.exc_info is None
        # Ours, by number and by id, apply.
        google.notify("SECRET_VERSION_ADD", "airflow-variables-token", PROJECT_NUMBER)
        eventually(lambda: fresh(agent, V, "token") == "new")
        google.secrets.put("airflow-variables-token", "newer")
        google.notify("SECRET_VERSION_ADD", "airflow-variables-token")
        eventually(lambda: fresh(agent, V, "token") == "newer")
        # These two, and the first (a name the backend serves, nothing held: no read).
        assert agent.metric(events, feed="gcp", result="applied") == 3


def test_foreign_projects_by_id_or_by_number_and_regional_secrets() -> None:
    assert project_of("projects/p-1/secrets/s") == "p-1"
    assert project_of("projects/p/locations/l/secrets/s") == "p"
    assert project_of("folders/1/secrets/s") == ""
    assert location_of("projects/p/locations/us-east1/secrets/s") == "us-east1"
    assert location_of("projects/p/secrets/s") == location_of("projects/p/secrets/locations") == ""
    assert foreign("p", "p", "") == foreign("42", "p", "42") == ""
    assert foreign("42", "p", "") == ""  # the number not learned yet: not judged
    assert foreign("q", "p", "42") == "project (q; this backend's: p)"
    assert foreign("43", "p", "42") == "project (43; this backend's: 42)"
    assert foreign("43", "42", "") == "project (43; this backend's: 42)"  # configured so
    assert foreign("q", "42", "") == ""  # an id against a number: cannot tell


def test_a_subscription_that_does_not_exist_says_so(google: Google, short_tmp: Path) -> None:
    google.pubsub.subscription = f"projects/{PROJECT}/subscriptions/agent-node-2"
    google.secrets.put("airflow-variables-token", "old")
    config = agent_config(short_tmp, "[cache]\nvariable_ttl = 3600\n", google.toml())
    with running_agent(config) as agent:
        eventually(lambda: "failing" in feed_health(agent, "gcp"))
        detail = feed_health(agent, "gcp")
        # Pub/Sub's, not Secret Manager's, and which subscription: what to go and fix.
        assert "Pub/Sub" in detail and "Secret Manager" not in detail, detail
        assert f"projects/{PROJECT}/subscriptions/agent-node-1 does not exist" in detail, detail
        assert value(agent, V, "token") == "old"  # the backend itself is fine


def test_parse_reads_the_attributes() -> None:
    assert parse({"eventType": "SECRET_UPDATE", "secretId": "projects/1/secrets/s"}) == (
        "s",
        False,
    )
    assert parse({"eventType": "SECRET_DELETE", "secretId": "projects/1/secrets/s"}) == ("s", True)
    assert parse({"eventType": "TOPIC_CONFIGURED", "secretId": "projects/1/secrets/s"}) is None
    with pytest.raises(ValueError, match="not a Secret Manager"):
        parse({"eventType": "SECRET_UPDATE"})


@pytest.mark.parametrize(
    ("subscription", "problem"),
    [
        ("", "is required"),
        ("projects/p/topics/t", "projects/<project>/subscriptions/<name>"),
        ("projects//subscriptions/s", "projects/<project>/subscriptions/<name>"),
        ("a b", "projects/<project>/subscriptions/<name>"),
        ("9starts-with-a-digit", "projects/<project>/subscriptions/<name>"),
    ],
)
def test_a_subscription_pubsub_cannot_have_is_a_config_error(
    subscription: str, problem: str, tmp_path: Path
) -> None:
    raw = {
        "backends": [
            {"name": "g", "type": "gcp_secret_manager", "feed": {"subscription": subscription}}
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, tmp_path)
    [line] = caught.value.problems
    assert line.startswith("backends[0].feed.subscription: ") and problem in line
    for fine in ("agent-node-1", "projects/my-proj/subscriptions/agent.node_1~x"):
        raw["backends"][0]["feed"] = {"subscription": fine}
        parse_config(raw, tmp_path)
