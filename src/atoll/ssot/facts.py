"""What one file says, extracted with ``ast`` in one pass: definitions, imports, calls,
shared state and auth patterns. Facts are plain data so they can be cached and sent
between processes; the rules combine the facts of all files.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MUTATORS = frozenset(
    {
        "append",
        "add",
        "update",
        "setdefault",
        "pop",
        "popitem",
        "clear",
        "extend",
        "insert",
        "remove",
        "discard",
        "appendleft",
        "extendleft",
    }
)
CONTAINER_CALLS = frozenset(
    {
        "dict",
        "list",
        "set",
        "defaultdict",
        "OrderedDict",
        "deque",
        "Counter",
        "ChainMap",
        "WeakSet",
        "WeakValueDictionary",
        "WeakKeyDictionary",
    }
)
CACHE_DECORATORS = frozenset({"cache", "lru_cache", "functools.cache", "functools.lru_cache"})
SINGLETON_ACCESSORS = frozenset({"get_instance", "instance", "getinstance", "getInstance"})
AUTH_FLAG = re.compile(r"(MOCK.*AUTH|AUTH.*BYPASS|SKIP.*AUTH|DISABLE.*AUTH|^DEMO_MODE$)", re.I)
DECODERS = frozenset({"jwt.decode", "jose.jwt.decode", "jwt.api_jwt.decode", "jwt.PyJWT.decode"})
B64_DECODERS = frozenset({"base64.urlsafe_b64decode", "base64.b64decode", "urlsafe_b64decode"})
TOKEN_VALIDATOR = re.compile(
    r"^_*(validate|verify|decode|check|parse|authenticate)_(jwt|token|access_token|bearer)$"
)


@dataclass
class Definition:
    """A top-level class, enum or function."""

    name: str
    kind: str  # class | enum | function
    line: int
    col: int
    members: list[str] = field(default_factory=list)


@dataclass
class ImportFact:
    """One imported name (``name`` is None for ``import module``)."""

    module: str
    name: str | None
    alias: str
    line: int
    col: int
    scope: str
    type_checking: bool = False


@dataclass
class AttributeUse:
    """``alias.Name`` where ``alias`` is an imported module."""

    module: str
    name: str
    line: int
    col: int
    scope: str


@dataclass
class CallFact:
    """A call whose callee resolved to a dotted name."""

    target: str
    line: int
    col: int
    scope: str
    module_level: bool
    assigned_to: str | None = None
    keywords: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    """Literal positional arguments (for token decoders and environment reads only)."""
    via_cls: bool = False
    """``cls(...)`` inside a classmethod of the class ``target`` names."""


@dataclass
class AliasFact:
    """A module-level ``Name = dotted.name`` (a concept defined by assignment)."""

    name: str
    target: str
    line: int
    col: int


@dataclass
class LocalFinding:
    """A finding decided from this file alone."""

    rule: str
    line: int
    col: int
    symbol: str
    scope: str
    message: str
    related: list[int] = field(default_factory=list)
    """Other lines of this file that are part of the same problem."""


@dataclass
class FileFacts:
    """Everything the rules need from one file."""

    path: str
    module: str
    is_test: bool
    definitions: list[Definition] = field(default_factory=list)
    imports: list[ImportFact] = field(default_factory=list)
    attributes: list[AttributeUse] = field(default_factory=list)
    calls: list[CallFact] = field(default_factory=list)
    local: list[LocalFinding] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    """Every name a module-level assignment binds."""
    aliases: list[AliasFact] = field(default_factory=list)
    token_functions: list[Definition] = field(default_factory=list)
    """Functions and methods named like a token validation (``verify_token`` …)."""
    syntax_error: str | None = None

    def defines(self, name: str) -> bool:
        """Whether this module binds ``name`` (a definition, an import, an assignment)."""
        return (
            any(d.name == name for d in self.definitions)
            or any(i.alias == name for i in self.imports if i.scope == "<module>")
            or name in self.names
        )

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready data (for the cache and between processes); shares, never copies."""
        return {
            "path": self.path,
            "module": self.module,
            "is_test": self.is_test,
            "definitions": [vars(d) for d in self.definitions],
            "imports": [vars(i) for i in self.imports],
            "attributes": [vars(a) for a in self.attributes],
            "calls": [vars(c) for c in self.calls],
            "local": [vars(f) for f in self.local],
            "names": self.names,
            "aliases": [vars(a) for a in self.aliases],
            "token_functions": [vars(d) for d in self.token_functions],
            "syntax_error": self.syntax_error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileFacts:
        """Back from ``to_dict``."""
        return cls(
            path=data["path"],
            module=data["module"],
            is_test=data["is_test"],
            definitions=[Definition(**d) for d in data["definitions"]],
            imports=[ImportFact(**i) for i in data["imports"]],
            attributes=[AttributeUse(**a) for a in data["attributes"]],
            calls=[CallFact(**c) for c in data["calls"]],
            local=[LocalFinding(**f) for f in data["local"]],
            names=data["names"],
            aliases=[AliasFact(**a) for a in data["aliases"]],
            token_functions=[Definition(**d) for d in data["token_functions"]],
            syntax_error=data["syntax_error"],
        )


def module_name(path: Path) -> str:
    """The dotted module of ``path``: its package chain, found through ``__init__.py`` files."""
    parts = [] if path.name == "__init__.py" else [path.stem]
    directory = path.parent
    while (directory / "__init__.py").exists():
        parts.insert(0, directory.name)
        directory = directory.parent
    return ".".join(parts) or path.stem


def is_test_file(path: Path) -> bool:
    """Test modules, conftest files and anything under a ``tests`` directory."""
    return (
        path.name.startswith("test_")
        or path.name.endswith("_test.py")
        or path.name == "conftest.py"
        or "tests" in path.parts
    )


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _plain(value: Any) -> Any:
    """``value`` as JSON data (sets and tuples become lists), or ``"<expr>"``."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v) for v in value]
        return "<expr>" if "<expr>" in items else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    return "<expr>"


def _literal(node: ast.expr) -> Any:
    try:
        return _plain(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return "<expr>"


def absolute_module(package: str, module: str | None, level: int) -> str:
    """The absolute module of ``from <level dots><module> import …`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".") if package else []
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    base = ".".join(parts)
    return f"{base}.{module}" if module and base else (module or base)


def _is_type_checking(test: ast.expr) -> bool:
    return _dotted(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _splits_on_dot(call: ast.Call) -> bool:
    """Whether an argument of ``call`` contains ``<x>.split(".")`` (a JWT's segments)."""
    for argument in call.args:
        for node in ast.walk(argument):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("split", "rsplit", "partition")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "."
            ):
                return True
    return False


def _new_returns_stored_instance(node: ast.ClassDef) -> bool:
    """``__new__`` that stores an instance on the class and returns it (a singleton)."""
    for item in node.body:
        if not isinstance(item, ast.FunctionDef) or item.name != "__new__":
            continue
        owners = {"cls", node.name}
        stored: set[str] = set()
        returned: set[str] = set()
        for inner in ast.walk(item):
            targets = inner.targets if isinstance(inner, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and _dotted(target.value) in owners:
                    stored.add(target.attr)
            if (
                isinstance(inner, ast.Return)
                and isinstance(inner.value, ast.Attribute)
                and _dotted(inner.value.value) in owners
            ):
                returned.add(inner.value.attr)
        if stored & returned:
            return True
    return False


_SKIP = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.Constant)


class _Collector(ast.NodeVisitor):
    def visit(self, node: ast.AST) -> Any:
        """Dispatch with a per-class method cache (the stdlib looks the name up each time)."""
        kind = type(node)
        method = self._methods.get(kind)
        if method is None:
            method = getattr(self, "visit_" + kind.__name__, None) or self.generic_visit
            self._methods[kind] = method
        return method(node)

    def generic_visit(self, node: ast.AST) -> None:
        """Visit children, skipping leaves no rule looks at (contexts, operators, constants)."""
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST) and not isinstance(item, _SKIP):
                        self.visit(item)
            elif isinstance(value, ast.AST) and not isinstance(value, _SKIP):
                self.visit(value)

    def __init__(self, facts: FileFacts, package: str) -> None:
        self._methods: dict[type, Any] = {}
        self.facts = facts
        self.package = package
        self.scope: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> dotted target
        self.module_aliases: dict[str, str] = {}  # local name -> module it stands for
        self.type_checking = 0
        self.module_containers: dict[str, int] = {}
        self.reported_mutations: set[str] = set()
        self.globals: dict[str, list[tuple[str, int, int]]] = {}
        """``global name`` -> where (scope, line, col): one finding per name, not per use."""
        self.cls_of: list[str | None] = []
        """For each function being visited: the module-level class whose ``cls`` it has."""

    # -- helpers ---------------------------------------------------------------

    @property
    def scope_name(self) -> str:
        return ".".join(self.scope) or "<module>"

    def resolve(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        target = self.aliases.get(head)
        if target is None:
            return dotted
        return f"{target}.{rest}" if rest else target

    def local(self, rule: str, node: ast.AST, symbol: str, message: str) -> None:
        self.facts.local.append(
            LocalFinding(
                rule,
                getattr(node, "lineno", 1),
                getattr(node, "col_offset", 0) + 1,
                symbol,
                self.scope_name,
                message,
            )
        )

    def absolute(self, module: str | None, level: int) -> str:
        return absolute_module(self.package, module, level)

    # -- imports ---------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            target = alias.name if alias.asname else alias.name.split(".")[0]
            self.aliases[local] = target
            self.module_aliases[local] = target
            self.facts.imports.append(
                ImportFact(
                    alias.name,
                    None,
                    local,
                    node.lineno,
                    node.col_offset + 1,
                    self.scope_name,
                    self.type_checking > 0,
                )
            )

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = self.absolute(node.module, node.level)
        for alias in node.names:
            local = alias.asname or alias.name
            if alias.name != "*":
                self.aliases[local] = f"{module}.{alias.name}"
                self.module_aliases[local] = f"{module}.{alias.name}"
            self.facts.imports.append(
                ImportFact(
                    module,
                    alias.name,
                    local,
                    node.lineno,
                    node.col_offset + 1,
                    self.scope_name,
                    self.type_checking > 0,
                )
            )

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    # -- definitions -----------------------------------------------------------

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if not self.scope and not self.type_checking:
            bases = {_dotted(b) or "" for b in node.bases}
            kind = "enum" if any(b.split(".")[-1].endswith("Enum") for b in bases) else "class"
            members = []
            for item in node.body:
                if isinstance(item, ast.Assign):
                    members += [t.id for t in item.targets if isinstance(t, ast.Name)]
                elif kind == "class" and isinstance(item, ast.AnnAssign):
                    if isinstance(item.target, ast.Name):
                        members.append(item.target.id)
                elif kind == "class" and isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    members.append(item.name)
            if kind == "class":  # what it offers, to tell a duplicate from a namesake
                members = [m for m in members if not m.startswith("__")]
            self.facts.definitions.append(
                Definition(node.name, kind, node.lineno, node.col_offset + 1, sorted(members))
            )
            # A module-level ``A()`` after ``class A`` names this module's A (it used to
            # resolve to a bare "A", which no rule recognised as a project class).
            self.aliases.setdefault(node.name, f"{self.facts.module}.{node.name}")
        self._singleton(node)
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _singleton(self, node: ast.ClassDef) -> None:
        has_instance = any(
            isinstance(item, ast.Assign | ast.AnnAssign)
            and any(
                isinstance(t, ast.Name) and t.id == "_instance"
                for t in (item.targets if isinstance(item, ast.Assign) else [item.target])
            )
            for item in node.body
        )
        accessor = any(
            isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            and item.name in SINGLETON_ACCESSORS
            for item in node.body
        )
        if has_instance and accessor:
            self.local(
                "SSOT004",
                node,
                node.name,
                f"class {node.name} is a singleton (_instance + accessor): one instance "
                "shared by every user and request",
            )
        elif _new_returns_stored_instance(node):
            self.local(
                "SSOT004",
                node,
                node.name,
                f"class {node.name} is a singleton (__new__ returns one stored instance): "
                "one instance shared by every user and request",
            )

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if not self.scope and not self.type_checking:
            self.facts.definitions.append(
                Definition(node.name, "function", node.lineno, node.col_offset + 1)
            )
        decorators = {
            _dotted(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list
        }
        arguments = node.args
        no_args = not (
            arguments.args
            or arguments.posonlyargs
            or arguments.kwonlyargs
            or arguments.vararg
            or arguments.kwarg
        )
        if no_args and decorators & CACHE_DECORATORS:
            self.local(
                "SSOT004",
                node,
                node.name,
                f"{node.name}() is a zero-argument cached factory: a hidden process-wide singleton",
            )
        if TOKEN_VALIDATOR.match(node.name) and not self.type_checking:
            self.facts.token_functions.append(
                Definition(node.name, "function", node.lineno, node.col_offset + 1)
            )
        owner = None
        if len(self.scope) == 1 and decorators & {"classmethod", "builtins.classmethod"}:
            owner = self.scope[0]  # a classmethod of a module-level class: `cls` is that class
        self.cls_of.append(owner)
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        self.cls_of.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    # -- state -----------------------------------------------------------------

    def visit_Global(self, node: ast.Global) -> None:
        if self.scope:
            for name in node.names:
                self.globals.setdefault(name, []).append(
                    (self.scope_name, node.lineno, node.col_offset + 1)
                )

    def finish(self) -> None:
        """One finding per module-level name rebound through ``global``, with every place
        that does it (a singleton's get/reset/close are one problem, not three)."""
        for name, uses in self.globals.items():
            _, line, col = uses[0]
            where = ", ".join(f"{s} (line {n})" for s, n, _ in uses)
            self.facts.local.append(
                LocalFinding(
                    "SSOT004",
                    line,
                    col,
                    name,
                    "<module>",
                    f"`global {name}` rebinds module state from {len(uses)} function(s): "
                    f"{where}: process-wide mutable state",
                    [n for _, n, _ in uses[1:]],
                )
            )

    def visit_Assign(self, node: ast.Assign) -> None:
        if not self.scope:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self._module_assignment(target.id, node.value, node)
        else:
            for target in node.targets:
                self._maybe_mutation(target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if not self.scope and isinstance(node.target, ast.Name) and node.value is not None:
            self._module_assignment(node.target.id, node.value, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if self.scope:
            self._maybe_mutation(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        if self.scope:
            for target in node.targets:
                self._maybe_mutation(target, node)
        self.generic_visit(node)

    def _module_assignment(self, name: str, value: ast.expr, node: ast.stmt) -> None:
        if not self.type_checking:
            self.facts.names.append(name)
            dotted = _dotted(value) if isinstance(value, ast.Name | ast.Attribute) else None
            if dotted is not None:
                aliased = self.resolve(dotted)
                self.aliases[name] = aliased  # `X = Engine; X()` constructs an Engine
                self.facts.aliases.append(
                    AliasFact(name, aliased, node.lineno, node.col_offset + 1)
                )
        if AUTH_FLAG.search(name) and not isinstance(value, ast.Call):
            # A call (os.getenv, the project's env wrapper …) is judged by the rules, which
            # know the configured accessors; here: a truthy literal or os.environ[...].
            literal = _literal(value)
            from_env = "environ" in ast.dump(value)
            if from_env or (literal != "<expr>" and bool(literal)):
                self.local(
                    "SSOT006",
                    node,
                    name,
                    f"auth bypass switch {name} is set "
                    f"{'from the environment' if from_env else 'truthy'}: identity must "
                    "come only from a verified token",
                )
        container = isinstance(value, ast.Dict | ast.List | ast.Set) or (
            isinstance(value, ast.Call)
            and (_dotted(value.func) or "").split(".")[-1] in CONTAINER_CALLS
        )
        if container and name != "__all__":
            self.module_containers[name] = node.lineno
        if isinstance(value, ast.Call):
            target = _dotted(value.func)
            if target:
                self._call(value, self.resolve(target), assigned_to=name)

    def _maybe_mutation(self, target: ast.expr, node: ast.stmt) -> None:
        base = target
        while isinstance(base, ast.Subscript | ast.Attribute):
            if isinstance(base, ast.Subscript) and isinstance(base.value, ast.Name):
                self._mutated(base.value.id, node)
                return
            base = base.value

    def _mutated(self, name: str, node: ast.AST) -> None:
        if name in self.module_containers and name not in self.reported_mutations:
            self.reported_mutations.add(name)
            self.local(
                "SSOT004",
                node,
                name,
                f"module-level container {name} is mutated by {self.scope_name}: "
                "state shared by every user and request",
            )

    # -- calls -----------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        target = _dotted(node.func)
        owner = self.cls_of[-1] if self.cls_of else None
        if target == "cls" and owner is not None:
            self.facts.calls.append(
                CallFact(
                    f"{self.facts.module}.{owner}",
                    node.lineno,
                    node.col_offset + 1,
                    self.scope_name,
                    False,
                    via_cls=True,
                )
            )
        elif target is not None and self.resolve(target) in B64_DECODERS and _splits_on_dot(node):
            self.local(
                "SSOT006",
                node,
                self.resolve(target),
                "a token decoded by hand (split on '.', then base64): its signature is never "
                "checked; use the one token validation",
            )
        if target is not None:
            if (
                self.scope
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.attr in MUTATORS
            ):
                self._mutated(node.func.value.id, node)
            if not (not self.scope and self._is_assignment_value(node)):
                self._call(node, self.resolve(target))
        self.generic_visit(node)

    def _is_assignment_value(self, node: ast.Call) -> bool:
        return id(node) in self._assignment_values

    def _call(self, node: ast.Call, target: str, assigned_to: str | None = None) -> None:
        # Only what a rule can use: module-level instances, token decoders, and calls
        # whose last part names a class (a capitalised name) that a factory may guard.
        last = target.rpartition(".")[2]
        head = node.args[0] if node.args else None  # literal_eval on every call costs
        first = head.value if isinstance(head, ast.Constant) else None
        flag_read = (isinstance(first, str) and bool(AUTH_FLAG.search(first))) or bool(
            assigned_to and AUTH_FLAG.search(assigned_to)
        )
        if not (assigned_to or target in DECODERS or last[:1].isupper() or flag_read):
            return
        keywords = (
            {k.arg: _literal(k.value) for k in node.keywords if k.arg}
            if (target in DECODERS or flag_read)
            else {}
        )
        args = [_literal(a) for a in node.args[:2]] if flag_read else []
        self.facts.calls.append(
            CallFact(
                target,
                node.lineno,
                node.col_offset + 1,
                self.scope_name,
                not self.scope,
                assigned_to,
                keywords,
                args,
            )
        )
        if assigned_to is not None:
            self._assignment_values.add(id(node))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.module_aliases:
            self.facts.attributes.append(
                AttributeUse(
                    self.module_aliases[node.value.id],
                    node.attr,
                    node.lineno,
                    node.col_offset + 1,
                    self.scope_name,
                )
            )
        self.generic_visit(node)

    _assignment_values: set[int]


def collect(path: Path, relative: str, source: str | bytes) -> FileFacts:
    """The facts of one file (a syntax error is recorded, not raised)."""
    module = module_name(path)
    facts = FileFacts(path=relative, module=module, is_test=is_test_file(Path(relative)))
    try:
        tree = ast.parse(source, filename=relative)
    except (SyntaxError, ValueError) as exc:
        facts.syntax_error = f"{type(exc).__name__}: {exc}"
        return facts
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    collector = _Collector(facts, package)
    collector._assignment_values = set()
    collector.visit(tree)
    collector.finish()
    return facts
