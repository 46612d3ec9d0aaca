"""Rewriting imports with LibCST (formatting and comments preserved).

Given a file's module and the project's ``moved`` and canonical registries (the same
object at a new import path: never a different API, which ``replaced`` names and
migrate leaves alone), the transformer moves each imported name to its new module —
splitting a ``from`` statement when only some of its names move — renames uses when
the name itself changes, rewrites ``import old.mod as alias``, and turns
``alias.OldName`` uses (where ``alias`` is a moved module) into the new name.
``targets`` lists every (module, name) an import it writes names, for the caller to
check that they exist before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import libcst as cst
from libcst.helpers import get_full_name_for_node

from atoll.ssot.facts import absolute_module


@dataclass(frozen=True)
class Registry:
    """The replacements migrate applies (only the rules it was asked for)."""

    moved: dict[str, str] = field(default_factory=dict)
    canonical: dict[str, str] = field(default_factory=dict)  # short name -> canonical module
    canonical_package: dict[str, str] = field(default_factory=dict)  # short name -> top package

    def replacement(self, module: str, name: str) -> tuple[str, str, str] | None:
        """(rule, new module, new name) for ``from module import name``, or None."""
        for key in (f"{module}:{name}", f"{module}.{name}"):
            if key in self.moved:
                new_module, _, new_name = self.moved[key].partition(":")
                if key.endswith(f".{name}") and not new_name:
                    return "SSOT002", new_module.rpartition(".")[0], new_module.rpartition(".")[2]
                return "SSOT002", new_module, new_name or name
        if module in self.moved:
            new_module, _, new_name = self.moved[module].partition(":")
            return "SSOT002", new_module, new_name or name
        home = self.canonical.get(name)
        if (
            home is not None
            and module != home
            and module.split(".")[0] == self.canonical_package.get(name)
        ):
            return "SSOT003", home, name
        return None


def _module_node(dotted: str) -> cst.Attribute | cst.Name:
    parts = dotted.split(".")
    node: cst.Attribute | cst.Name = cst.Name(parts[0])
    for part in parts[1:]:
        node = cst.Attribute(value=node, attr=cst.Name(part))
    return node


class ImportRewriter(cst.CSTTransformer):
    """Rewrites one module's imports; ``changes`` lists what it did."""

    def __init__(self, package: str, registry: Registry) -> None:
        super().__init__()
        self.package = package
        self.registry = registry
        self.renames: dict[str, str] = {}  # local name -> new local name
        self.module_aliases: dict[str, str] = {}  # alias -> deprecated module it names
        self.added_names: dict[str, tuple[str, str]] = {}  # local -> (module, name)
        self.changes: list[str] = []
        self.targets: list[tuple[str, str | None]] = []  # (module, name) of written imports

    def names_in(self, module: str) -> bool:
        """Whether names of ``module`` are deprecated one by one (``module:Name``)."""
        return any(key.startswith(f"{module}:") for key in self.registry.moved)

    # -- from-imports ------------------------------------------------------------

    def leave_ImportFrom(
        self, original_node: cst.ImportFrom, updated_node: cst.ImportFrom
    ) -> cst.ImportFrom | cst.FlattenSentinel[cst.BaseSmallStatement] | cst.RemovalSentinel:
        if isinstance(updated_node.names, cst.ImportStar):
            return updated_node
        module_name = get_full_name_for_node(updated_node.module) if updated_node.module else None
        module = absolute_module(self.package, module_name, len(updated_node.relative))
        kept: list[cst.ImportAlias] = []
        moved: list[cst.ImportFrom] = []
        for alias in updated_node.names:
            name = get_full_name_for_node(alias.name) or ""
            local = (
                alias.asname.name.value
                if alias.asname and isinstance(alias.asname.name, cst.Name)
                else name
            )
            submodule = f"{module}.{name}"
            if self.names_in(submodule):
                self.module_aliases[local] = submodule  # `from pkg import mod as m`; m.Old
            target = self.registry.replacement(module, name)
            if target is None:
                kept.append(alias)
                continue
            rule, new_module, new_name = target
            as_name = alias.asname
            if alias.asname is None and new_name != name:
                self.renames[local] = new_name
            moved.append(
                cst.ImportFrom(
                    module=_module_node(new_module),
                    names=[cst.ImportAlias(name=cst.Name(new_name), asname=as_name)],
                )
            )
            self.changes.append(f"{rule}: {module}.{name} -> {new_module}.{new_name}")
            self.targets.append((new_module, new_name))
        if not moved:
            return updated_node
        statements: list[cst.BaseSmallStatement] = []
        if kept:
            last = kept[-1]
            if updated_node.lpar is None:  # no parentheses: a trailing comma is invalid
                last = last.with_changes(comma=cst.MaybeSentinel.DEFAULT)
            # In parentheses the comma stays, with the comment after it.
            statements.append(updated_node.with_changes(names=[*kept[:-1], last]))
        statements += moved
        return cst.FlattenSentinel(statements)

    def leave_SimpleStatementLine(
        self, original_node: cst.SimpleStatementLine, updated_node: cst.SimpleStatementLine
    ) -> cst.SimpleStatementLine | cst.FlattenSentinel[cst.SimpleStatementLine]:
        """Put statements split out of one ``from`` import on lines of their own."""
        if len(updated_node.body) <= len(original_node.body):
            return updated_node
        first = updated_node.with_changes(body=[updated_node.body[0]])
        rest = [cst.SimpleStatementLine(body=[statement]) for statement in updated_node.body[1:]]
        return cst.FlattenSentinel([first, *rest])

    # -- import a.b as c ---------------------------------------------------------

    def leave_Import(self, original_node: cst.Import, updated_node: cst.Import) -> cst.Import:
        names = []
        for alias in updated_node.names:
            dotted = get_full_name_for_node(alias.name) or ""
            replacement = self.registry.moved.get(dotted)
            if replacement is not None and ":" not in replacement and alias.asname is not None:
                names.append(alias.with_changes(name=_module_node(replacement)))
                self.changes.append(f"SSOT002: import {dotted} -> import {replacement}")
                self.targets.append((replacement, None))
            else:
                if self.names_in(dotted) and alias.asname is not None:
                    self.module_aliases[cst.ensure_type(alias.asname.name, cst.Name).value] = dotted
                names.append(alias)
        return updated_node.with_changes(names=names)

    # -- uses ------------------------------------------------------------------------

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.BaseExpression:
        if isinstance(updated_node.value, cst.Name):
            module = self.module_aliases.get(updated_node.value.value)
            if module is not None:
                key = f"{module}:{updated_node.attr.value}"
                if key in self.registry.moved:
                    new_module, _, new_name = self.registry.moved[key].partition(":")
                    new_name = new_name or updated_node.attr.value
                    self.added_names[new_name] = (new_module, new_name)
                    self.changes.append(f"SSOT002: {key} -> {new_module}.{new_name}")
                    self.targets.append((new_module, new_name))
                    return cst.Name(new_name)
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.added_names:
            return updated_node
        imports = [
            cst.SimpleStatementLine(
                [
                    cst.ImportFrom(
                        module=_module_node(module), names=[cst.ImportAlias(name=cst.Name(name))]
                    )
                ]
            )
            for module, name in sorted(set(self.added_names.values()))
        ]
        body = list(updated_node.body)
        position = 0
        for index, statement in enumerate(body):
            if isinstance(statement, cst.SimpleStatementLine) and any(
                isinstance(s, cst.Import | cst.ImportFrom) for s in statement.body
            ):
                position = index + 1
        return updated_node.with_changes(body=[*body[:position], *imports, *body[position:]])


class RenameUses(cst.CSTTransformer):
    """Renames uses of local names — not import statements, not attribute names."""

    def __init__(self, renames: dict[str, str]) -> None:
        super().__init__()
        self.renames = renames

    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.Attribute:
        return updated_node.with_changes(attr=original_node.attr)

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        new = self.renames.get(updated_node.value)
        return updated_node.with_changes(value=new) if new else updated_node


@dataclass(frozen=True)
class Rewritten:
    """What ``rewrite`` did to one file."""

    code: str
    changes: Sequence[str]
    targets: Sequence[tuple[str, str | None]]


def rewrite(source: str, package: str, registry: Registry) -> Rewritten:
    """The rewritten source, the list of changes (empty when nothing applies) and the
    (module, name) pairs the new imports name."""
    module = cst.parse_module(source)
    rewriter = ImportRewriter(package, registry)
    updated = module.visit(rewriter)
    if rewriter.renames:
        updated = updated.visit(RenameUses(rewriter.renames))
    return Rewritten(updated.code, rewriter.changes, rewriter.targets)
