"""The README and docs/ stay true to the code: set-up commands, config keys, blocks, links, metrics.

Code blocks in README.md and docs/**/*.md:

- ```` ```toml ```` is an agent config. A complete one is validated as ``check-config`` validates
  it (the loader's ``parse_config``: unknown keys, types, ranges), in process; the files it
  names (key files, credential files) are not read, since they exist only on the reader's
  machine. A block whose first line is a comment starting ``# fragment`` (e.g.
  ``# fragment: [[backends]] of type "vault"``) is only part of a config: it must parse as TOML
  and every key in it must exist in the schema; ``[[backends]]`` tables in it need a ``type``.
- ```` ```ini ```` (Airflow settings, systemd drop-ins) must parse with ``configparser``
  (repeated keys allowed, as systemd allows them).

Links: every relative link resolves to a file or folder in the repository, and a ``#anchor``
into a Markdown file names one of its headings (GitHub's anchor for it).

Metrics: every ``secrets_agent_*`` name in the docs is a series the agent exports, and the
Metrics section of docs/operations.md names every family and every label.
"""

from __future__ import annotations

import configparser
import dataclasses
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from secrets_agent.backends.registry import BACKEND_TYPES
from secrets_agent.config.loader import parse_config
from secrets_agent.config.schema import AccessRule, AgentConfig, BackendCommon
from secrets_agent.errors import ConfigError
from secrets_agent.ops.metrics import Metrics
from support import ROOT

# The distributions' READMEs too: their blocks are what an index page shows.
PACKAGE_READMES = [ROOT / "agent" / "README.md", ROOT / "client" / "README.md"]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *PACKAGE_READMES]
# Every field of AgentConfig but backends and access (arrays of tables, checked on their own)
# and warnings (not a section) is a section.
SECTIONS = [
    f.name
    for f in dataclasses.fields(AgentConfig)
    if f.name not in ("backends", "access", "warnings")
]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", flags=re.M | re.S)


def _fields(cls: type) -> dict[str, type | None]:
    """A dataclass's keys, each with its nested table's dataclass (None for a plain value)."""
    fields: dict[str, type | None] = {}
    for name, hint in typing.get_type_hints(cls).items():
        nested = [
            t
            for t in (hint, *typing.get_args(hint))
            if isinstance(t, type) and dataclasses.is_dataclass(t)
        ]
        fields[name] = nested[0] if nested else None
    return fields


def _section_class(section: str) -> type:
    return type(getattr(AgentConfig(), section))


def _blocks(language: str) -> list[tuple[str, str]]:
    """(where, text) of every fenced block in that language."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", match.group(2)))
    return found


def test_readme_setup_has_exactly_the_demo_and_test_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", setup, flags=re.S)
    assert commands == ["./scripts/demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n./scripts/test\n" in ci and "\n./scripts/demo\n" in ci


def test_example_config_mentions_every_key() -> None:
    example = (ROOT / "config.example.toml").read_text()
    for section in SECTIONS:
        assert f"[{section}]" in example
    pending: list[type] = [_section_class(s) for s in SECTIONS]
    pending += [BackendCommon, AccessRule, *[b.Options for b in BACKEND_TYPES.values()]]
    keys: list[str] = []
    while pending:
        fields = _fields(pending.pop())
        keys += fields
        pending += [nested for nested in fields.values() if nested is not None]
    missing = [
        key for key in keys if not re.search(rf"^#?\s*\[?[\w.]*\b{key}\b", example, flags=re.M)
    ]
    assert missing == []


# --- the configuration reference (docs/configuration.md) against the schema


def _table_rows(text: str, columns: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == columns and not set(cells[0]) <= {"-", ":"}:
            rows.append(cells)
    return rows


def _keys_in(cell: str) -> set[str]:
    """The keys a table cell lists: code spans outside parentheses (which hold values)."""
    cell = re.sub(r"\([^()]*\)", "", cell)
    return {k for k in re.findall(r"`([^`]+)`", cell) if re.fullmatch(r"[a-z_][a-z0-9_]*", k)}


def _documented(column_of_table: int) -> dict[tuple[str, ...], set[str]]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = _table_rows(text, column_of_table + 1)
    return {tuple(c.strip("`") for c in row[:-1]): _keys_in(row[-1]) for row in rows[1:]}


def _mismatches(
    documented: dict[tuple[str, ...], set[str]], expected: dict[tuple[str, ...], set[str]]
) -> dict[str, dict[str, list[str]]]:
    """Per table row: keys the schema has that the page lacks, and keys it lists that are gone."""
    out = {}
    for row in documented.keys() | expected.keys():
        have, want = documented.get(row, set()), expected.get(row, set())
        if row not in documented or row not in expected or have != want:
            out[" ".join(row)] = {
                "not documented": sorted(want - have),
                "not in the schema": sorted(have - want),
            }
    return out


def test_configuration_reference_lists_exactly_the_schemas_section_keys() -> None:
    documented = _documented(1)
    expected: dict[tuple[str, ...], set[str]] = {}
    pending: list[tuple[str, type]] = [(s, _section_class(s)) for s in SECTIONS]
    while pending:  # a section's nested tables are rows of their own: [shared_cache.iam]
        table, cls = pending.pop()
        fields = _fields(cls)
        expected[(f"[{table}]",)] = set(fields)
        pending += [(f"{table}.{k}", n) for k, n in fields.items() if n is not None]
    expected[("[[backends]]",)] = set(_fields(BackendCommon))
    expected[("[[access]]",)] = set(_fields(AccessRule))
    assert _mismatches(documented, expected) == {}


def test_configuration_reference_lists_exactly_each_backend_types_keys() -> None:
    expected: dict[tuple[str, ...], set[str]] = {}
    for name, backend in BACKEND_TYPES.items():
        pending: list[tuple[str, type]] = [("[[backends]]", backend.Options)]
        while pending:
            table, cls = pending.pop()
            fields = _fields(cls)
            expected[(name, table)] = {k for k, nested in fields.items() if nested is None}
            pending += [(f"[backends.{k}]", n) for k, n in fields.items() if n is not None]
    assert _mismatches(_documented(2), expected) == {}


# --- TOML and INI blocks


def _unknown_keys(raw: dict[str, Any]) -> list[str]:
    """Keys of a (partial) agent config that the schema does not have."""
    unknown: list[str] = []

    def walk(table: dict[str, Any], cls: type, where: str) -> None:
        fields = _fields(cls)
        for key, value in table.items():
            if key not in fields:
                unknown.append(f"{where}{key}")
            elif fields[key] is not None and isinstance(value, dict):
                walk(value, typing.cast(type, fields[key]), f"{where}{key}.")

    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            walk(value, _section_class(key), f"{key}.")
        elif key == "backends" and isinstance(value, list):
            for i, backend in enumerate(value):
                kind = BACKEND_TYPES.get(backend.get("type", ""))
                if kind is None:
                    unknown.append(f"backends[{i}].type = {backend.get('type')!r}")
                    continue
                common = set(_fields(BackendCommon))
                rest = {k: v for k, v in backend.items() if k not in common}
                walk(rest, kind.Options, f"backends[{i}].")
        elif key == "access" and isinstance(value, list):
            for i, rule in enumerate(value):
                walk(rule, AccessRule, f"access[{i}].")
        else:
            unknown.append(key)
    return unknown


def _check_toml(text: str) -> list[str]:
    """The problems check-config would report (or, for a fragment, unknown keys)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"not TOML: {exc}"]
    if text.lstrip().startswith("# fragment"):
        return _unknown_keys(raw)
    try:
        parse_config(raw, base_dir=ROOT)
    except ConfigError as exc:
        return [str(exc)]
    return []


TOML_BLOCKS = _blocks("toml")
INI_BLOCKS = _blocks("ini")


@pytest.mark.parametrize(("where", "text"), TOML_BLOCKS, ids=[w for w, _ in TOML_BLOCKS])
def test_toml_block_is_a_valid_agent_config_or_fragment(where: str, text: str) -> None:
    assert _check_toml(text) == []


@pytest.mark.parametrize(("where", "text"), INI_BLOCKS, ids=[w for w, _ in INI_BLOCKS])
def test_ini_block_parses(where: str, text: str) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(text, source=where)
    assert parser.sections()


def test_block_checks_catch_mistakes() -> None:
    assert _check_toml("[cache]\nmax_entrys = 5\n") != []
    assert _check_toml("[cache]\nmax_entries = 0\n") != []
    assert _check_toml("# fragment: [cache]\n[cache]\nmax_entrys = 5\n") == ["cache.max_entrys"]
    vault = '# fragment\n[[backends]]\ntype = "vault"\n[backends.approle]\nrole = "x"\n'
    assert _check_toml(vault) == ["backends[0].approle.role"]
    assert _check_toml('# fragment\n[[backends]]\ntype = "vault"\nurl = "https://v"\n') == []
    assert _check_toml("# fragment\n[cache\n") != []


def test_docs_have_toml_and_ini_blocks_to_check() -> None:
    assert len(TOML_BLOCKS) >= 3 and len(INI_BLOCKS) >= 3


# --- links


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        base = _anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def _broken_links(path: Path, root: Path = ROOT) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text()))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        inside = resolved.exists() and root in (resolved, *resolved.parents)
        if not inside or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_relative_links_resolve(path: Path) -> None:
    assert _broken_links(path) == []


def _linked(text: str, base: str) -> set[str]:
    return {base + link.split("#")[0] for link in re.findall(r"\]\(([^)#\s]+\.md)", text)}


def test_every_docs_page_is_in_the_index_and_in_the_readmes_where_to_read_on() -> None:
    """docs/README.md asks every new page to be linked from both: a reader finds it there."""
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")} - {"docs/README.md"}
    index = _linked((ROOT / "docs" / "README.md").read_text(), "docs/")
    readme = (ROOT / "README.md").read_text()
    read_on = _linked(readme.split("\n## Where to read on", 1)[1].split("\n## ", 1)[0], "")
    assert sorted(pages - index) == [], "not in docs/README.md"
    assert sorted(pages - read_on) == [], "not in the README's Where to read on"


# Files that name a docs page in plain text (comments, messages): the pages move as docs/ grows.
PLAIN_REFERENCES = [
    ROOT / "config.example.toml",
    *(p for p in (ROOT / "systemd").iterdir()),
    *(p for p in (ROOT / "deploy").rglob("*") if p.is_file()),
    *(ROOT / "agent" / "src").rglob("*.py"),
    *(ROOT / "client" / "src").rglob("*.py"),
]


def test_docs_pages_named_in_config_units_deploy_files_and_sources_exist() -> None:
    named = {
        f"{path.relative_to(ROOT)}: {page}"
        for path in PLAIN_REFERENCES
        for page in re.findall(r"\bdocs/[\w./-]*\.md\b", path.read_text())
        if not (ROOT / page).is_file()
    }
    assert named == set()
    assert any("docs/" in p.read_text() for p in PLAIN_REFERENCES)


def test_link_check_catches_mistakes(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# The `vault` backend: keys\n\n## Keys\n\n## Keys\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#the-vault-backend-keys) [ok](b.md#keys-1) [ok](#top)\n"
        "[bad](missing.md) [bad](b.md#nowhere) [bad](#nowhere) `[code](missing.md)`\n"
        "```md\n[fenced](missing.md)\n```\n# Top\n"
    )
    assert _broken_links(page, root=tmp_path) == ["missing.md", "b.md#nowhere", "#nowhere"]


# --- metric names


def _metrics() -> dict[str, tuple[str, set[str]]]:
    """Each metric family the agent declares: its type and its label names."""
    metrics = Metrics()
    labels: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        name = getattr(metric, "_name", None)
        if isinstance(name, str):  # a prometheus_client metric, or the agent's LatencyHistogram
            found = getattr(metric, "_labelnames", None) or (getattr(metric, "_label", None),)
            labels[name.removesuffix("_total")] = {label for label in found if label}
    return {f.name: (f.type, labels.get(f.name, set())) for f in metrics.registry.collect()}


def _series(family: str, kind: str) -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_sum", "_count"]}
    return {family + suffix for suffix in suffixes.get(kind, [""])}


METRIC_MENTION = re.compile(r"\bsecrets_agent_(?!client\b)[a-z_]*[a-z]\b")


def test_metrics_named_in_the_docs_exist() -> None:
    series = {s for family, (kind, _) in _metrics().items() for s in _series(family, kind)}
    named = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOC_FILES
        for name in METRIC_MENTION.findall(path.read_text())
        if name not in series
    }
    assert named == set()


def test_operations_lists_every_metric_and_label() -> None:
    """docs/operations.md's Metrics section names each family (unprefixed) and each label."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    spans = set(re.findall(r"`([a-z_]+)`", section))
    metrics = _metrics()
    assert len(metrics) >= 30
    listed = {
        family
        for family, (kind, _) in metrics.items()
        if spans & {s.removeprefix("secrets_agent_") for s in _series(family, kind)}
    }
    assert set(metrics) - listed == set()
    labels = set().union(*(found for _, found in metrics.values()))
    assert {"kind", "backend", "feed"} <= labels
    assert labels - spans == set()
