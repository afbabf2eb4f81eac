"""The file backend against Airflow 3.3.2's and 2.10.5's own LocalFilesystemBackend, on the same
files.

Cases: the inputs of Airflow's ``airflow-core/tests/unit/secrets/test_local_filesystem.py``, plus
edge cases (typed YAML scalars, null, BOM, CRLF, comments, quoting, duplicates, empty files,
hot-reload edits). Every answer must match, or fall under a difference docs/backends/file.md lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from secrets_agent.errors import StartupError
from support.helpers import FakeClock, running_agent
from support.parity import Group, Query, ask_both, migrated, mismatches, write

pytestmark = [pytest.mark.integration, pytest.mark.airflow]

PROVIDER = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
C, V, CFG = "connection", "variable", "config"
PROVIDER_KEYS = {C: "connections_file_path", V: "variables_file_path", CFG: "configs_file_path"}

# The deliberate differences (docs/backends/file.md, "Migrating from LocalFilesystemBackend").
TRIMMED = ".env spaces trimmed"
DASHED = "dashed connection types normalised"
ENV_JSON = "a JSON value in .env is read as JSON"
ONE_BAD_ENTRY = "one bad connection entry fails only that entry"
STRING_KEYS = "non-string YAML keys are read as strings"
CONN_URI = "conn_uri is another name for uri"
DELETED = "a deleted file serves nothing"
BAD_EDIT = "a bad edit keeps the last good contents serving"
DATE_IN_EXTRA = "a date in a connection's extra is ISO text"


@dataclass
class Case:
    name: str
    files: dict[str, tuple[str, str | bytes]]  # kind → (file name, content)
    ids: dict[str, list[str]]  # kind → ids to ask
    differs: dict[str, str] = field(default_factory=dict)  # id → the listed difference
    # Hot reload: new contents (None deletes the file), asked again with the same ids.
    edit: dict[str, tuple[str, str | bytes] | None] | None = None
    edit_differs: dict[str, str] = field(default_factory=dict)
    worker: bool = False  # connections as a task's process builds them (support/parity.Group)

    def queries(self) -> list[Query]:
        return [(kind, i, None) for kind, ids in self.ids.items() for i in ids]


def jdump(value: object) -> str:
    return json.dumps(value)


YAML_CONNS = """\
conn_a: mysql://hosta
conn_b:
   conn_type: scheme
   host: host
   schema: lschema
   login: Login
   password: None
   port: 1234
   extra_dejson:
     arbitrary_dict:
        a: b
     keyfile_dict: '{"a": "b"}'
     keyfile_path: asaa
conn_c:
   conn_type: scheme
   host: host
   extra: '{"keyfile_dict": {"a": "b"}}'
"""

TYPED = """\
day: 2024-01-01
stamp: 2024-01-01 10:20:30
zoned: 2024-01-01T10:20:30+02:00
flag: true
count: 7
ratio: 1.5
items: [1, two]
table: {a: 1, b: [x]}
nothing: ~
empty:
quoted: 'single'
dquoted: "a \\"b\\""
"""

CASES = [
    # -- Airflow's own test inputs ------------------------------------------------------------
    Case(
        "env_vars",
        {V: ("v.env", "KEY_A=AAA\n # AAAA\n\n\nKEY_B=BBB\n")},
        {V: ["KEY_A", "KEY_B", "KEY_C"]},
    ),
    Case("env_vars_empty", {V: ("v.env", "")}, {V: ["KEY"]}),
    Case("env_no_equals", {V: ("v.env", "AA")}, {V: ["AA"]}),
    Case("env_empty_key", {V: ("v.env", "=")}, {V: ["x"]}),
    Case("env_duplicate", {V: ("v.env", "AA=A\nAA=B")}, {V: ["AA"]}),
    Case(
        "json_vars",
        {V: ("v.json", jdump({"KEY_A": "AAA", "KEY_B": "BBB"}))},
        {V: ["KEY_A", "KEY_C"]},
    ),
    Case("json_vars_empty_object", {V: ("v.json", "{}")}, {V: ["KEY"]}),
    Case("json_not_object", {V: ("v.json", "[]")}, {V: ["KEY"]}),
    Case("json_invalid", {V: ("v.json", "{AAAAA}")}, {V: ["KEY"]}),
    Case("json_empty", {V: ("v.json", "")}, {V: ["KEY"]}),
    Case(
        "yaml_vars",
        {V: ("v.yaml", "\n            KEY_A: AAA\n            KEY_B: BBB\n")},
        {V: ["KEY_A", "KEY_B"]},
    ),
    Case("yml_vars", {V: ("v.yml", "KEY: AAA")}, {V: ["KEY"]}),
    Case(
        "env_conns",
        {
            C: (
                "c.env",
                "CONN_ID1=mysql://host_1/\n # AAAA\nCONN_ID2=mysql://host_2/?param1=val1&param2=val2\n",
            )
        },
        {C: ["CONN_ID1", "CONN_ID2", "CONN_ID3"]},
    ),
    Case(
        "env_conn_duplicate",
        {C: ("c.env", "CONN_ID=mysql://host_1/\nCONN_ID=mysql://host_2/")},
        {C: ["CONN_ID"]},
    ),
    Case("json_conn_uri", {C: ("c.json", jdump({"CONN_ID": "mysql://host_1"}))}, {C: ["CONN_ID"]}),
    Case(
        "json_conn_listed_uri",
        {C: ("c.json", jdump({"CONN_ID": ["mysql://host_1"]}))},
        {C: ["CONN_ID"]},
    ),
    Case(
        "json_conn_uri_field",
        {C: ("c.json", jdump({"CONN_ID": {"uri": "mysql://host_1"}}))},
        {C: ["CONN_ID"]},
    ),
    Case(
        "json_conn_listed_uri_field",
        {C: ("c.json", jdump({"CONN_ID": [{"uri": "mysql://host_1"}]}))},
        {C: ["CONN_ID"]},
    ),
    Case("json_conn_null", {C: ("c.json", jdump({"CONN_ID": None}))}, {C: ["CONN_ID"]}),
    Case("json_conn_int", {C: ("c.json", jdump({"CONN_ID": 1}))}, {C: ["CONN_ID"]}),
    Case("json_conn_listed_int", {C: ("c.json", jdump({"CONN_ID": [2]}))}, {C: ["CONN_ID"]}),
    Case("json_conn_listed_null", {C: ("c.json", jdump({"CONN_ID": [None]}))}, {C: ["CONN_ID"]}),
    Case(
        "json_conn_illegal_key",
        {C: ("c.json", jdump({"CONN_ID": {"AAA": "mysql://host_1"}}))},
        {C: ["CONN_ID"]},
    ),
    Case(
        "json_conn_id_mismatch",
        {C: ("c.json", jdump({"CONN_ID": {"conn_id": "BBBB"}}))},
        {C: ["CONN_ID"]},
    ),
    Case(
        "json_conn_two_values",
        {C: ("c.json", jdump({"CONN_ID": ["mysql://", "mysql://"]}))},
        {C: ["CONN_ID"]},
    ),
    Case(
        "json_conn_two_uri_fields",
        {C: ("c.json", jdump({"CONN_ID": [{"uri": "mysql://host_1"}, {"uri": "mysql://host_2"}]}))},
        {C: ["CONN_ID"]},
    ),
    Case("yaml_conns", {C: ("c.yaml", YAML_CONNS)}, {C: ["conn_a", "conn_b", "conn_c", "conn_x"]}),
    Case("yaml_conn_quoted_uri", {C: ("c.yaml", "CONN_A: 'mysql://host_a'")}, {C: ["CONN_A"]}),
    Case(
        "yaml_extra_and_extra_dejson",
        {
            C: (
                "c.yaml",
                "conn_c:\n  conn_type: scheme\n  extra:\n    abc: xyz\n  extra_dejson:\n    a: b\n",
            )
        },
        {C: ["conn_c"]},
    ),
    Case(
        "yaml_conn_two_values",
        {C: ("c.yaml", "conn_a:\n  - mysql://hosta\n  - mysql://hostb")},
        {C: ["conn_a"]},
    ),
    # -- edge cases ---------------------------------------------------------------------------
    Case(
        "yaml_typed_scalars",
        {V: ("v.yaml", TYPED)},
        {
            V: [
                "day",
                "stamp",
                "zoned",
                "flag",
                "count",
                "ratio",
                "items",
                "table",
                "nothing",
                "empty",
                "quoted",
                "dquoted",
            ]
        },
    ),
    Case(
        "json_typed",
        {V: ("v.json", jdump({"n": None, "b": False, "i": 3, "l": [1], "m": {"k": None}}))},
        {V: ["n", "b", "i", "l", "m"]},
    ),
    Case("yaml_config", {CFG: ("cfg.yaml", "a: [one]\nb: 5\nc: ~\n")}, {CFG: ["a", "b", "c", "d"]}),
    Case("json_bom", {V: ("v.json", b"\xef\xbb\xbf" + jdump({"k": "v"}).encode())}, {V: ["k"]}),
    Case("yaml_bom", {V: ("v.yaml", b"\xef\xbb\xbfk: v\n")}, {V: ["k"]}),
    Case("env_bom", {V: ("v.env", b"\xef\xbb\xbfk=v\nj=w\n")}, {V: ["k", "j"]}),
    Case("env_crlf", {V: ("v.env", "a=1\r\nb=2\r\n")}, {V: ["a", "b"]}),
    Case("yaml_crlf", {V: ("v.yaml", "a: 1\r\nb: two\r\n")}, {V: ["a", "b"]}),
    Case(
        "env_quotes_and_equals",
        {V: ("v.env", 'q="quoted"\ne=a=b=c\nh=x#not-a-comment\n')},
        {V: ["q", "e", "h"]},
    ),
    Case("env_whitespace_line", {V: ("v.env", "a=1\n   \nb=2\n")}, {V: ["a"]}),
    Case("env_no_value", {V: ("v.env", "a=1\nb=\n")}, {V: ["a", "b"]}),
    Case("json_whitespace", {V: ("v.json", "  \n ")}, {V: ["a"]}),
    Case("yaml_empty", {V: ("v.yaml", "")}, {V: ["a"]}),
    Case("yaml_whitespace", {V: ("v.yaml", " \n\n")}, {V: ["a"]}),
    Case("yaml_comment_only", {V: ("v.yaml", "# nothing\n")}, {V: ["a"]}),
    Case("json_duplicate_keys", {V: ("v.json", '{"a": "1", "a": "2"}')}, {V: ["a"]}),
    Case("yaml_duplicate_keys", {V: ("v.yaml", "a: 1\na: 2\n")}, {V: ["a"]}),
    Case(
        "json_conn_fields",
        {
            C: (
                "c.json",
                jdump(
                    {
                        "described": {
                            "uri": "postgresql://u:p%40ss@Host.Local:5432/db?sslmode=require",
                            "description": "d",
                        },
                        "teamed": {"conn_type": "http", "host": "h", "team_name": "team_a"},
                        "same_id": {"conn_id": "same_id", "conn_type": "http", "host": "h"},
                        "listed_none": [],
                        "fields": {
                            "conn_type": "mysql",
                            "host": "h",
                            "port": 3306,
                            "extra": {"x": [1]},
                        },
                    }
                ),
            )
        },
        {C: ["described", "teamed", "same_id", "listed_none", "fields"]},
    ),
    Case(
        "uri_query_extras_in_a_worker",
        {
            C: (
                "c.yaml",
                "typed: postgresql://u:p@h:5432/db?verify=false&connect_timeout=10&n=null\n"
                "nested: 'http://h?opts=%7B%22a%22%3A+%5B1%5D%7D&s=text&e='\n"
                "listed:\n  - uri: mysql://h?ssl=true\n"
                "raw: 'mysql://h?__extra__=%7B%22k%22%3A+1%7D'\n"
                "plain: mysql://u:p@h:3306/db\n",
            ),
        },
        {C: ["typed", "nested", "listed", "raw", "plain"]},
        worker=True,
    ),
    # -- the listed differences ---------------------------------------------------------------
    Case("env_spaces", {V: ("v.env", "k = v \n")}, {V: ["k"]}, differs={"k": TRIMMED}),
    Case(
        "dashed_type",
        {C: ("c.yaml", "c:\n  conn_type: google-cloud-platform\n  host: h\n")},
        {C: ["c"]},
        differs={"c": DASHED},
    ),
    Case(
        "env_json_conn",
        {C: ("c.env", 'c={"conn_type": "http", "host": "h"}\n')},
        {C: ["c"]},
        differs={"c": ENV_JSON},
    ),
    Case(
        "one_bad_entry",
        {C: ("c.json", jdump({"bad": {"conn_id": "other"}, "good": "mysql://h"}))},
        {C: ["bad", "good"]},
        differs={"good": ONE_BAD_ENTRY},
    ),
    Case(
        "yaml_int_keys",
        {V: ("v.yaml", "1: one\n2.5: two\n")},
        {V: ["1", "2.5"]},
        differs={"1": STRING_KEYS, "2.5": STRING_KEYS},
    ),
    Case(
        "conn_uri_field",
        {C: ("c.json", jdump({"c": {"conn_uri": "mysql://h"}}))},
        {C: ["c"]},
        differs={"c": CONN_URI},
    ),
    Case(
        "date_in_extra",
        {C: ("c.yaml", "c:\n  conn_type: http\n  extra_dejson:\n    since: 2024-01-01\n")},
        {C: ["c"]},
        differs={"c": DATE_IN_EXTRA},
    ),
    # -- hot reload ---------------------------------------------------------------------------
    Case(
        "reload_values",
        {V: ("v.yaml", "a: one\nb: two\n")},
        {V: ["a", "b", "c", "d"]},
        edit={V: ("v.yaml", "a: changed\nc: 2024-01-01\nd: ~\n")},
    ),
    Case(
        "reload_connections",
        {C: ("c.json", jdump({"x": "mysql://h1"}))},
        {C: ["x", "y"]},
        edit={C: ("c.json", jdump({"y": [{"conn_type": "http", "host": "h2"}]}))},
    ),
    Case(
        "reload_bad_edit",
        {V: ("v.json", jdump({"a": "one"}))},
        {V: ["a"]},
        edit={V: ("v.json", '{"a": ')},
        edit_differs={"a": BAD_EDIT},
    ),
    Case(
        "reload_deleted",
        {V: ("v.json", jdump({"a": "one"}))},
        {V: ["a"]},
        edit={V: None},
        edit_differs={"a": DELETED},
    ),
]


@contextlib.contextmanager
def case_agent(case: Case, directory: Path, clock: FakeClock) -> Iterator[str | None]:
    """The agent on what ``migrate`` writes for the case's files; None if it refuses them."""
    config = migrated(directory, PROVIDER, provider_kwargs(case, directory))
    try:
        with running_agent(config, clock=clock) as agent:
            yield agent.socket_path
    except StartupError:
        yield None


def provider_kwargs(case: Case, directory: Path) -> dict[str, str]:
    return {PROVIDER_KEYS[kind]: str(directory / name) for kind, (name, _) in case.files.items()}


def allowed(case: Case, differs: dict[str, str]) -> dict[int, str]:
    return {i: differs[q[1]] for i, q in enumerate(case.queries()) if q[1] in differs}


# Airflow 2.10.5's LocalFilesystemBackend beside 3.3.2's (the agent answers as Airflow 3, not
# knowing the version; docs/backends/file.md): a list value is "several values" there, and a
# connection may not carry team_name; either fails the whole file. It has no configs file. Its
# Connection keeps a URI's query values as text (Airflow 3's reads each as JSON where it parses).
LIST_VALUE = "a list variable on Airflow 2.10: a one-item list is its item, others fail the file"
QUERY_TEXT = "a URI's query values on Airflow 2.10: text there, JSON-typed as Airflow 3 reads them"
DIFFERS_210 = {
    "yaml_typed_scalars": dict.fromkeys(
        [i for c in CASES if c.name == "yaml_typed_scalars" for i in c.ids[V]], LIST_VALUE
    ),
    "json_typed": {"l": LIST_VALUE},
    "uri_query_extras_in_a_worker": dict.fromkeys(["typed", "nested", "listed"], QUERY_TEXT),
    "json_conn_fields": dict.fromkeys(
        ["described", "teamed", "same_id", "listed_none", "fields"], ONE_BAD_ENTRY
    ),
}


def cases_for(airflow: str) -> list[Case]:
    if airflow != "2.10.5":
        return CASES
    return [
        dataclasses.replace(c, differs=c.differs | DIFFERS_210.get(c.name, {}))
        for c in CASES
        if CFG not in c.files
    ]


@pytest.mark.parametrize("airflow", ["3.3.2", "2.10.5"])
def test_file_backend_answers_as_local_filesystem_backend(airflow: str) -> None:
    cases = cases_for(airflow)
    root = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            groups, clocks = [], []
            for index, case in enumerate(cases):
                directory = root / str(index)
                for name, content in case.files.values():
                    write(directory / name, content)
                clock = FakeClock()
                socket = stack.enter_context(case_agent(case, directory, clock))
                clocks.append(clock)
                groups.append(
                    Group(
                        PROVIDER,
                        provider_kwargs(case, directory),
                        socket,
                        case.queries(),
                        worker=case.worker,
                    )
                )
            ask_both(groups, airflow=airflow)
            problems = [
                f"{case.name}: {p}"
                for case, group in zip(cases, groups, strict=True)
                for p in mismatches(group, allowed(case, case.differs))
            ]

            edited = [(i, c) for i, c in enumerate(cases) if c.edit is not None]
            for index, case in edited:
                for kind, change in (case.edit or {}).items():
                    name = case.files[kind][0]
                    if change is None:
                        (root / str(index) / name).unlink()
                    else:
                        write(root / str(index) / change[0], change[1])
                clocks[index].advance(100_000)  # past every TTL and max_stale: ask the file
            again = [
                Group(
                    PROVIDER,
                    groups[i].provider_kwargs,
                    groups[i].socket,
                    c.queries(),
                    worker=c.worker,
                )
                for i, c in edited
            ]
            ask_both(again, airflow=airflow)
            problems += [
                f"{case.name} (after the edit): {p}"
                for (_, case), group in zip(edited, again, strict=True)
                for p in mismatches(group, allowed(case, case.edit_differs))
            ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert not problems, "\n".join(problems)
