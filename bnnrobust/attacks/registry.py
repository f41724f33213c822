"""Attack registry: ``@register_attack``, ``list_attacks``, the attack table of the docs.

Each named attack of :func:`bnnrobust.attacks.factory.build_attack` is one
:class:`AttackEntry`, registered next to its class (importing the module registers it)::

    @register_attack("apgd-ce", aliases=("apgd",), fixed={"loss": "ce"}, temperature=True,
                     l2_variant=True, surrogate=True, budget="eps",
                     description="our APGD-CE (APGD++ with a temperature), 100 steps")
    class APGD(Attack): ...

    register_attack("apgd-dlr", fixed={"loss": "dlr"}, ...)(APGD)   # a second name, same class

Registration order is the order of :func:`list_attacks` and of the docs table. The spec
forms that take other specs (``{"name": "cascade", ...}``, ``{"name": "transfer", ...}``)
are handled by ``build_attack`` itself and are not registered.

Regenerate the table of ``docs/attacks.md``::

    python -m bnnrobust.attacks.registry --write docs/attacks.md
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from bnnrobust.attacks.base import Attack

__all__ = [
    "ATTACK_REGISTRY",
    "BUDGETS",
    "LISTED_TEMPERATURES",
    "TABLE_END",
    "TABLE_START",
    "TEMPERATURE_SUFFIXES",
    "AttackEntry",
    "attack_entries",
    "attack_table_markdown",
    "find_attack",
    "list_attacks",
    "register_attack",
    "replace_attack_table",
    "unknown_attack_error",
]

#: temperatures a ``"++"`` suffix may name (``"pgd++njs"``, ``"pgd++hns"``, ``"pgd++prop1"``)
TEMPERATURE_SUFFIXES: tuple[str, ...] = ("njs", "hns", "prop1")
#: the suffixes :func:`list_attacks` lists for each attack that takes a temperature
LISTED_TEMPERATURES: tuple[str, ...] = ("njs", "hns")

Budget = Literal["fgsm", "pgd", "eps", "dataset", "none"]
#: what ``build_attack`` fills from the dataset preset when the spec does not give it
BUDGETS: dict[str, str] = {
    "fgsm": "eps, step_size: FGSM row",
    "pgd": "eps, step_size, steps: PGD row of the norm",
    "eps": "eps: PGD row of the norm",
    "dataset": "eps: PGD row of the norm (the dataset is passed on)",
    "none": "none (unbounded)",
}
_RESERVED = ("cascade", "transfer")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")

TABLE_START = "<!-- attack-table:start -->"
TABLE_END = "<!-- attack-table:end -->"


@dataclass(frozen=True)
class AttackEntry:
    """One registered attack name.

    Attributes:
        name: the name (lower case), e.g. ``"pgd_dlr"``.
        builder: the class (or function) ``build_attack`` calls with the spec's arguments.
        description: one line for tables.
        aliases: other names of the same entry (e.g. the name the attack reports).
        temperature: a ``"++njs"``/``"++hns"``/``"++prop1"`` suffix is accepted.
        l2_variant: a ``"_l2"`` suffix (``norm="l2"``) is accepted.
        surrogate: a ``surrogate`` argument (attack-time backward of sign activations) is
            accepted.
        fixed: arguments fixed by the name (``{"loss": "dlr"}``); a spec may repeat them,
            not contradict them.
        budget: the defaults filled from the dataset preset (a key of :data:`BUDGETS`).
    """

    name: str
    builder: Callable[..., Attack]
    description: str
    aliases: tuple[str, ...] = ()
    temperature: bool = False
    l2_variant: bool = False
    surrogate: bool = False
    fixed: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    budget: Budget = "eps"

    def parameters(self) -> list[str]:
        """The builder's argument names (a spec's keys must be among them)."""
        return [p for p in inspect.signature(self.builder).parameters if p != "self"]

    def listed_names(self) -> list[str]:
        """This entry's names in :func:`list_attacks`: the name and its listed ``++`` ones."""
        temps = LISTED_TEMPERATURES if self.temperature else ()
        return [self.name, *(f"{self.name}++{t}" for t in temps)]

    def defaults_text(self) -> str:
        """Fixed arguments and preset defaults, for the table."""
        fixed = ", ".join(f"`{k}={v}`" for k, v in self.fixed.items())
        return f"{fixed}; {BUDGETS[self.budget]}" if fixed else BUDGETS[self.budget]


#: name or alias -> entry, in registration order
ATTACK_REGISTRY: dict[str, AttackEntry] = {}

B = TypeVar("B", bound=Callable[..., Any])


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"register_attack: {kind} {name!r} must be lower case letters, digits, "
                         f"'_' or '-' (no '++'), and not one of {', '.join(_RESERVED)}.")
    return name


def register_attack(
    name: str,
    *,
    description: str,
    aliases: Sequence[str] = (),
    temperature: bool = False,
    l2_variant: bool = False,
    surrogate: bool = False,
    fixed: Mapping[str, Any] | None = None,
    budget: Budget = "eps",
) -> Callable[[B], B]:
    """Register ``builder`` under ``name``; use as a class decorator or ``(...)(builder)``.

    The flags are checked against the builder's signature (``temperature``/``l2_variant``
    need a ``temperature``/``norm`` argument that ``fixed`` leaves free; ``surrogate`` must
    say whether it takes one). See :class:`AttackEntry` for the fields.

    Raises:
        ValueError: a bad name, a name or alias registered to another entry, or a flag the
            builder's signature contradicts.
    """

    def decorator(builder: B) -> B:
        key = _check_name("name", name)
        alias_keys = tuple(_check_name("alias", a) for a in aliases)
        entry = AttackEntry(key, builder, description, alias_keys, bool(temperature),
                            bool(l2_variant), bool(surrogate), MappingProxyType(dict(fixed or {})),
                            budget)
        _check_entry(entry)
        for k in (key, *alias_keys):
            old = ATTACK_REGISTRY.get(k)
            if old is not None and (old.name != key or old.builder is not builder):
                raise ValueError(f"register_attack: {k!r} is already registered to "
                                 f"{old.name!r} ({old.builder!r}).")
        for k in (key, *alias_keys):
            ATTACK_REGISTRY[k] = entry
        return builder

    return decorator


def _check_entry(e: AttackEntry) -> None:
    params = e.parameters()
    where = f"register_attack({e.name!r}) of {getattr(e.builder, '__name__', e.builder)!r}"
    if not e.description.strip() or "\n" in e.description:
        raise ValueError(f"{where}: description must be one non-empty line.")
    if e.budget not in BUDGETS:
        raise ValueError(f"{where}: budget {e.budget!r} is not one of {', '.join(BUDGETS)}.")
    needs = {"fgsm": ("eps", "step_size"), "pgd": ("eps", "step_size", "steps"),
             "eps": ("eps",), "dataset": ("dataset",), "none": ()}[e.budget]
    wanted = [*e.fixed, *needs, *(["temperature"] if e.temperature else []),
              *(["norm"] if e.l2_variant else [])]
    missing = [p for p in wanted if p not in params]
    if missing:
        raise ValueError(f"{where}: the builder takes no {', '.join(missing)} (its arguments: "
                         f"{', '.join(params)}).")
    if e.temperature and "temperature" in e.fixed or e.l2_variant and "norm" in e.fixed:
        raise ValueError(f"{where}: a suffix cannot change an argument fixed by the name.")
    if e.surrogate != ("surrogate" in params):
        raise ValueError(f"{where}: surrogate={e.surrogate} but the builder "
                         f"{'takes' if 'surrogate' in params else 'takes no'} 'surrogate'.")


def attack_entries() -> list[AttackEntry]:
    """The registered entries (each once, aliases folded), in registration order."""
    return list({id(e): e for e in ATTACK_REGISTRY.values()}.values())


def find_attack(name: str) -> AttackEntry | None:
    """The entry registered under ``name`` or an alias of it (exact, lower case), or None."""
    return ATTACK_REGISTRY.get(name)


def list_attacks(pattern: str = "*") -> list[str]:
    """The names ``build_attack`` accepts, matching the fnmatch ``pattern``, in registry order.

    Each attack that takes a temperature is listed with ``++njs`` and ``++hns``; the
    ``_l2`` variants, ``++prop1`` and the aliases are accepted but not listed.
    """
    names = [n for e in attack_entries() for n in e.listed_names()]
    return [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]


def unknown_attack_error(name: object) -> ValueError:
    """The error for an unknown attack name: close matches, the known names, the syntax."""
    listed = list_attacks()
    close = difflib.get_close_matches(str(name).lower(), listed, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    tempered = ", ".join(e.name for e in attack_entries() if e.temperature)
    suffixes = "/".join(f"'++{t}'" for t in TEMPERATURE_SUFFIXES)
    return ValueError(
        f"Unknown attack {name!r}.{hint} Known names: {', '.join(listed)}; a '_l2' suffix "
        f"selects the L2 threat model (e.g. 'apgd-ce_l2'), a {suffixes} suffix "
        f"the temperature of {tempered}; dicts {{'name': ..., <arguments>}} (with "
        "e.g. 'temperature': {'name': 'njs', 'rho': 1e-5}) and "
        "{'name': 'cascade', 'attacks': [...]} are accepted too."
    )


def attack_table_markdown() -> str:
    """The registered attacks as a Markdown table (the one between the markers of the docs)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def flag(on: bool) -> str:
        return "yes" if on else "—"

    lines = [
        "| name | aliases | `++njs`/`++hns`/`++prop1` | `_l2` | surrogate | defaults "
        "(fixed; from the dataset preset) | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in attack_entries():
        aliases = ", ".join(f"`{a}`" for a in e.aliases) or "—"
        lines.append(f"| `{e.name}` | {aliases} | {flag(e.temperature)} | {flag(e.l2_variant)} "
                     f"| {flag(e.surrogate)} | {cell(e.defaults_text())} "
                     f"| {cell(e.description)} |")
    return "\n".join(lines) + "\n"


def replace_attack_table(text: str, table: str | None = None) -> str:
    """``text`` with the part between :data:`TABLE_START` and :data:`TABLE_END` replaced."""
    table = attack_table_markdown() if table is None else table
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"No {TABLE_START} ... {TABLE_END} block to replace.")
    return f"{text[:start]}{TABLE_START}\n{table}{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    """``--markdown``: print the table; ``--write PATH``: rewrite the table in PATH."""
    parser = argparse.ArgumentParser(prog="python -m bnnrobust.attacks.registry",
                                     description="The attack registry as a Markdown table.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the table")
    group.add_argument("--write", metavar="PATH", type=Path,
                       help="replace the table between the markers of PATH")
    args = parser.parse_args(argv)
    if args.markdown:
        print(attack_table_markdown(), end="")
        return 0
    path: Path = args.write
    old = path.read_text(encoding="utf-8")
    new = replace_attack_table(old)
    if new != old:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: attack table {'updated' if new != old else 'up to date'}.")
    return 0


if __name__ == "__main__":  # pragma: no cover
    # run as a script, this file is a second copy of the module: use the one attacks register in
    from bnnrobust.attacks.registry import main as _main

    raise SystemExit(_main())
