"""Every backend type tells whether one kind's names reach into another's, from its own naming.

One contract for every type: a config whose prefixes (paths, files) nest is found nested, the
default layout is not, and the read-time fence agrees with the names the backend builds: of
two reads that name one upstream secret, only the kind whose namespace is the narrower one is
let through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secrets_agent.backends.base import BackendContext
from secrets_agent.backends.feeds import Named, ids_for
from secrets_agent.backends.file.backend import FileBackend
from secrets_agent.backends.namespaces import PROBE, Naming, naming_of, notices
from secrets_agent.backends.registry import BACKEND_TYPES, create_backend
from secrets_agent.config.loader import parse_config
from secrets_agent.errors import InvalidIdError
from secrets_agent.kinds import Kind, validate_id

C, V, K = Kind.CONNECTION, Kind.VARIABLE, Kind.CONFIG
VAULT = {"url": "http://127.0.0.1:8200"}
AZURE = {"vault_url": "https://v.vault.azure.net"}

# type -> (options whose kinds nest, the outer kind's id reaching the inner kind's "x").
NESTED: dict[str, tuple[dict[str, Any], dict[tuple[Kind, Kind], str]]] = {
    "env": ({"connections_prefix": "AIRFLOW_"}, {(C, V): "VAR_x"}),
    "file": (
        {"connections_file": "both.json", "variables_file": "both.json"},
        {(C, V): PROBE},
    ),
    "vault": (VAULT | {"connections_path": ""}, {(C, V): "variables/x", (C, K): "config/x"}),
    "aws_secrets_manager": (
        {"connections_prefix": "airflow", "kinds": ["connections", "variables"]},
        {(C, V): "variables/x"},
    ),
    "aws_ssm": (
        {"variables_prefix": "", "kinds": ["connections", "variables"]},
        {(V, C): "airflow/connections/x"},
    ),
    "gcp_secret_manager": (
        {"connections_prefix": "airflow", "kinds": ["connections", "variables"]},
        {(C, V): "variables-x"},
    ),
    "azure_key_vault": (
        AZURE | {"connections_prefix": "AIRFLOW", "kinds": ["connections", "variables"]},
        {(C, V): "variables-x"},
    ),
}
# More layouts that nest, each type's own ways: no mount, teams, empty prefixes, case.
MORE_NESTED: list[tuple[str, dict[str, Any]]] = [
    ("vault", VAULT | {"mount_point": "", "connections_path": ""}),
    ("vault", VAULT | {"variables_path": "connections/variables", "team_layout": True}),
    ("aws_secrets_manager", {"connections_prefix": "", "team_layout": True}),
    ("aws_ssm", {"connections_prefix": "/airflow", "sep": "/"}),
    ("gcp_secret_manager", {"variables_prefix": "airflow-connections-v", "team_layout": True}),
    ("azure_key_vault", AZURE | {"config_prefix": "", "team_layout": True}),
    ("azure_key_vault", AZURE | {"variables_prefix": "Airflow_Connections_Vars"}),
    ("env", {"config_prefix": "AIRFLOW_CONN_X"}),
]
# Layouts that look close but keep kinds apart.
APART: list[tuple[str, dict[str, Any]]] = [
    ("env", {}),
    ("env", {"config_prefix": "AIRFLOW_SECRET_CONFIG_"}),
    ("file", {"connections_file": "c.json", "variables_file": "c.json.json"}),
    ("vault", VAULT),
    ("vault", VAULT | {"mount_point": ""}),
    ("vault", VAULT | {"connections_path": "", "kinds": ["connections"]}),
    ("aws_secrets_manager", {}),
    ("aws_secrets_manager", {"connections_prefix": "airflow/conn", "variables_prefix": "air"}),
    ("aws_ssm", {}),
    ("gcp_secret_manager", {}),
    ("gcp_secret_manager", {"connections_prefix": "airflow-v"}),  # "airflow-v-" vs "...ables-"
    ("gcp_secret_manager", {"connections_prefix": ""}),  # "-<id>": nothing else starts so
    ("azure_key_vault", AZURE),
]


def options(type_name: str, table: dict[str, Any], base: Path = Path("/srv")) -> Any:
    config = parse_config({"backends": [{"name": "b", "type": type_name, **table}]}, base)
    return config.backends[0].options


def naming(type_name: str, table: dict[str, Any]) -> Naming:
    found = naming_of(options(type_name, table))
    assert found is not None, f"{type_name}'s options have no naming()"
    return found


def test_every_backend_type_is_covered() -> None:
    assert set(NESTED) == set(BACKEND_TYPES)
    assert {t for t, _ in APART} == set(BACKEND_TYPES)


@pytest.mark.parametrize("type_name", sorted(NESTED))
def test_nested_kinds_are_found_and_the_fence_keeps_each_name_to_its_own_kind(
    type_name: str,
) -> None:
    table, reaches = NESTED[type_name]
    named = naming(type_name, table)
    found = {(n.outer, n.inner): n for n in named.nestings()}
    assert set(found) == set(reaches)
    for (outer, inner), example in reaches.items():
        if found[(outer, inner)].same:
            assert example == PROBE
        else:
            assert found[(outer, inner)].example == example
        # The outer kind's id reads the very name the inner kind's id does.
        reached = named.named(outer, example, None)
        assert reached is not None and named.fold(reached) == named.fold(
            named.named(inner, PROBE, None) or ""
        )
        assert named.intrudes(outer, example, None) is inner  # fenced
        if found[(outer, inner)].same:  # one namespace: no read is the inner kind's alone
            assert named.intrudes(inner, PROBE, None) is outer
            continue
        assert named.intrudes(inner, PROBE, None) is None
        assert named.intrudes(outer, "db_main", None) is None  # its own ids stay its own


@pytest.mark.parametrize(("type_name", "table"), APART)
def test_kinds_kept_apart_are_not_reported_nor_fenced(
    type_name: str, table: dict[str, Any]
) -> None:
    named = naming(type_name, table)
    assert named.nestings() == []
    for kind in Kind:
        for secret_id in ("x", "variables/x", "connections-x", "VAR_x", "config/x"):
            assert named.intrudes(kind, secret_id, None) is None
    assert notices(named, rules=True) == ([], [])


ids = st.text(st.sampled_from("aAxX_-/.vV0"), min_size=1, max_size=24)
heads = st.sampled_from(["", "variables/", "variables-", "VAR_", "airflow/connections/", "v-"])
teams = st.sampled_from([None, "t", "variables", "variables-t", "connections"])
layouts = [(t, NESTED[t][0]) for t in sorted(NESTED)] + MORE_NESTED


def readers(named: Naming, name: str, mount: str | None) -> set[tuple[Kind, str]]:
    """Every (kind, id) whose global read asks for the upstream secret ``name``: candidates
    from the feeds' inverse of the same naming (as written, and case-folded), then checked."""

    def look(case: Callable[[str], str]) -> Named:
        def inner(kind: Kind, secret_id: str, team: str | None) -> str | None:
            found = named.named(kind, secret_id if mount is None else f"{mount}/{secret_id}", team)
            if found is None:
                return None
            return case(found) if mount is None else case(found).removeprefix(case(f"{mount}/"))

        return inner

    candidates = set()
    for case in (str, str.lower):
        target = case(name) if mount is None else case(name).removeprefix(case(f"{mount}/"))
        for kind, secret_id in ids_for(target, Kind, look(case)):
            candidates.add((kind, secret_id if mount is None else f"{mount}/{secret_id}"))
    return {
        (kind, secret_id)
        for kind, secret_id in candidates
        if (other := named.named(kind, secret_id, None)) is not None
        and named.fold(other) == named.fold(name)
    }


@pytest.mark.parametrize(("type_name", "table"), layouts)
@given(head=heads, tail=ids, team=teams)
def test_no_two_kinds_both_read_one_upstream_name(
    type_name: str, table: dict[str, Any], head: str, tail: str, team: str | None
) -> None:
    """For any read, and any read of another kind that names one of the same upstream secrets,
    at most one of the two gets past the fence (the narrower namespace's own kind)."""
    secret_id = head + tail
    try:
        validate_id(secret_id)
    except InvalidIdError:
        return  # answered 400 before any backend
    named = naming(type_name, table)
    assert named.nestings(), (type_name, table)
    mount = None if named.probe is None else secret_id.partition("/")[0]
    for kind in Kind:
        asked = [named.named(kind, secret_id, None), named.named(kind, secret_id, team)]
        for name in filter(None, asked):
            for other, other_id in readers(named, name, mount):
                if other is not kind:
                    one = named.intrudes(kind, secret_id, team)
                    two = named.intrudes(other, other_id, None)
                    assert one is not None or two is not None, (kind, secret_id, other, other_id)


def test_a_team_read_that_lands_on_another_kinds_names_is_fenced() -> None:
    """GCP: the connection prefix "airflow" and a team "variables-t" name "airflow-variables-
    t--x", the team t's variable x."""
    named = naming(
        "gcp_secret_manager",
        {
            "connections_prefix": "airflow",
            "kinds": ["connections", "variables"],
            "team_layout": True,
        },
    )
    assert named.named(C, "x", "variables-t") == named.named(V, "x", "t")
    assert named.intrudes(C, "x", "variables-t") is V
    assert named.intrudes(C, "x", "t") is None and named.intrudes(V, "x", "t") is None


@pytest.mark.parametrize(("type_name", "table"), [(t, NESTED[t][0]) for t in sorted(NESTED)])
def test_the_warning_and_the_error_name_the_keys(type_name: str, table: dict[str, Any]) -> None:
    named = naming(type_name, table)
    warnings, problems = notices(named, rules=False)
    assert warnings and not problems
    same = any(n.same for n in named.nestings())
    with_rules = notices(named, rules=True)
    assert bool(with_rules[1]) is same  # one namespace for two kinds: an error under rules
    for said in (warnings, with_rules[0] + with_rules[1]):
        for nest, (key, reason) in zip(named.nestings(), said, strict=True):
            assert key == named.key.format(nest.inner.plural)
            assert named.key.format(nest.outer.plural) in reason


def test_the_env_backend_reads_the_other_kinds_variable_as_airflow_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the warning is about, with the real backend: without the fence, a connection id
    reads a variable's environment variable (Airflow's EnvironmentVariablesBackend would too)."""
    import asyncio

    monkeypatch.setenv("AIRFLOW_VAR_TOKEN", "s3cret")
    config = parse_config(
        {"backends": [{"name": "e", "type": "env", "connections_prefix": "AIRFLOW_"}]}, Path("/")
    )
    backend = create_backend(config.backends[0], BackendContext())
    assert asyncio.run(backend.fetch(C, "var_token")) == "s3cret"
    assert naming_of(config.backends[0].options).intrudes(C, "var_token", None) is V  # type: ignore[union-attr]


def test_the_file_backend_serving_two_kinds_from_one_file(tmp_path: Path) -> None:
    import asyncio

    both = tmp_path / "both.json"
    both.write_text('{"token": "postgres://u:s3cret@h/db"}')
    link = tmp_path / "link.json"
    os.symlink(both, link)  # the same file under another name is the same namespace
    table = {"connections_file": str(both), "variables_file": str(link)}
    config = parse_config({"backends": [{"name": "f", "type": "file", **table}]}, tmp_path)
    backend = create_backend(config.backends[0], BackendContext())
    assert isinstance(backend, FileBackend)
    asyncio.run(backend.start())
    assert asyncio.run(backend.fetch(V, "token")) == "postgres://u:s3cret@h/db"
    assert asyncio.run(backend.fetch(C, "token")) is not None
    named = naming_of(config.backends[0].options)
    assert named is not None and [n.same for n in named.nestings()] == [True]
