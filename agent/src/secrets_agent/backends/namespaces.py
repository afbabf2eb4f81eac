"""Whether one kind's upstream names can reach into another kind's, on one backend.

A backend names each kind's secrets under a prefix (a path, a file). When one kind's prefix
lies inside another's, the outer kind's ids reach the inner kind's secrets: with
``connections_prefix = "airflow"`` and ``variables_prefix = "airflow/variables"``, the
connection ``variables/x`` reads the name the variable ``x`` is stored under. Airflow's own
backends read it so; with ``[[access]]`` rules it is a way around a rule on the inner kind, so
the chain fences such reads off (``lookup/fence.py``) and the config says so.

Every answer here comes from the backend's own naming function, probed with a placeholder id,
so it cannot disagree with the names a lookup reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import permutations

from secrets_agent.backends.feeds import Named
from secrets_agent.kinds import Kind

PROBE = "x"  # a placeholder id every backend can name
SCOPED = "mount/x"  # a placeholder id for namings whose scope is the id's first segment


def _same(name: str) -> str:
    return name


@dataclass(frozen=True)
class Nesting:
    """Kind ``outer``'s names include kind ``inner``'s (all of them when ``same``)."""

    outer: Kind
    inner: Kind
    same: bool
    example: str | None  # an ``outer`` id that reads the ``inner`` id PROBE's name, if found


@dataclass(frozen=True)
class Naming:
    """A backend's naming, as far as keeping its kinds apart needs."""

    # (kind, id, None): the name a read asks for; (kind, id, team): its team-scoped name
    # first read for a team. None: no such name (the kind is off, or the upstream cannot hold it).
    named: Named
    key: str = "{}_prefix"  # the option placing each kind (``per_kind``'s convention)
    remedy: str = "give each kind a prefix outside the others', or leave one out of kinds"
    # The upstream holds names equal after ``fold`` as one (Key Vault ignores case).
    fold: Callable[[str], str] = _same
    # The placeholder id naming the same scope as an id: for Vault without a mount_point,
    # the id's first segment is the mount, and kinds can meet only within one mount.
    probe: Callable[[str], str] | None = None  # None: always PROBE

    def _probe(self, secret_id: str) -> str:
        return PROBE if self.probe is None else self.probe(secret_id)

    def root(self, kind: Kind, probe: str = PROBE) -> str | None:
        """What every name of ``kind`` begins with (folded), in the scope of ``probe``."""
        name = self.named(kind, probe, None)
        # Probes end in "x"; a backend that upper-cases ids (env) names it "X".
        if name is None or name[-1:] not in ("x", "X"):
            return None
        return self.fold(name[:-1])

    def nestings(self) -> list[Nesting]:
        """Every pair of served kinds where one's names include another's."""
        probe = self._probe(SCOPED)
        order = list(Kind).index
        roots = {kind: root for kind in Kind if (root := self.root(kind, probe)) is not None}
        found = []
        for outer, inner in permutations(roots, 2):
            same = roots[inner] == roots[outer]
            if not roots[inner].startswith(roots[outer]) or (same and order(outer) > order(inner)):
                continue
            example = None
            if not same:
                example = probe[:-1] + roots[inner][len(roots[outer]) :] + PROBE
                target = self.named(inner, probe, None)
                reached = self.named(outer, example, None)
                if reached is None or target is None or self.fold(reached) != self.fold(target):
                    example = None
            found.append(Nesting(outer, inner, same, example))
        return found

    def intrudes(self, kind: Kind, secret_id: str, team: str | None) -> Kind | None:
        """The other kind whose names a read of ``kind`` would ask for, if any: one whose
        namespace lies inside (or is) this kind's. Its names are its own, not this kind's."""
        probe = self._probe(secret_id)
        own = self.root(kind, probe)
        if own is None:
            return None
        inner = {
            other: root
            for other in Kind
            if other is not kind
            and (root := self.root(other, probe)) is not None
            and root.startswith(own)
        }
        if not inner:
            return None
        names = [self.named(kind, secret_id, None)]
        if team is not None:
            names.append(self.named(kind, secret_id, team))
        for name in names:
            if name is not None:
                folded = self.fold(name)
                for other, root in inner.items():
                    if folded.startswith(root):
                        return other
        return None


def naming_of(options: object) -> Naming | None:
    """The backend options' naming (``Options.naming()``); None for a type without one."""
    naming: Callable[[], Naming] | None = getattr(options, "naming", None)
    return None if naming is None else naming()


def notices(naming: Naming, rules: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(warnings, problems) as (key, reason) for kinds whose names meet; ``rules``: whether
    ``[[access]]`` rules are configured. A nesting is fenced at read time, so it is a
    warning; kinds sharing one namespace cannot be told apart at all, so with rules they are a
    config error."""
    warnings, problems = [], []
    for nest in naming.nestings():
        outer, inner = nest.outer, nest.inner
        outer_key, key = naming.key.format(outer.plural), naming.key.format(inner.plural)
        if nest.same:
            shared = f'the {outer.value} "{PROBE}" and the {inner.value} "{PROBE}" are one secret'
            if rules:
                problems.append(
                    (
                        key,
                        f"names the same secrets as {outer_key} ({shared}), so the [[access]] "
                        f"rules cannot keep {outer.plural} and {inner.plural} apart on this "
                        f"backend: {naming.remedy}",
                    )
                )
            else:
                warnings.append(
                    (
                        key,
                        f"names the same secrets as {outer_key}: {shared}, as Airflow's backend "
                        f"reads them; with [[access]] rules this is a config error: "
                        f"{naming.remedy}",
                    )
                )
            continue
        reach = (
            f'the {outer.value} "{nest.example}" reads the secret of the {inner.value} "{PROBE}"'
            if nest.example
            else f"some {outer.value} ids read names kept for {inner.plural}"
        )
        if rules:
            reason = (
                f"lies inside {outer_key}: {reach}, around the [[access]] rules on "
                f"{inner.plural}; so with rules in force this backend answers such "
                f"{outer.value} ids as not found. To serve them, {naming.remedy}"
            )
        else:
            reason = (
                f"lies inside {outer_key}: {reach}, as Airflow's backend reads it; with "
                f"[[access]] rules the agent answers such {outer.value} ids as not found here. "
                f"To keep the kinds apart, {naming.remedy}"
            )
        warnings.append((key, reason))
    return warnings, problems
