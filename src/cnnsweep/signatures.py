"""A class's or function's parameters and their types as config values, read from its source file.

The config schemas (cnnsweep.schema) are derived from the constructors the config options name. They are
read here from the source (Python's `ast`), not by importing the target: `import cnnsweep` and train.py's
precheck, which refuse a bad override before anything else, would otherwise wait for torch (2-3 s).
tests/test_config.py checks that this reading agrees with `inspect.signature` for every option's target.

Types are the forms OmegaConf checks: int, float, bool, str, Optional[...], List[...], Dict[str, ...]; anything
else (a tensor, a union of two config types such as `bool | str`) is Any, which OmegaConf takes unchecked.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

# OmegaConf reads these annotations at runtime: typing's Optional/List/Dict forms are the ones it understands.
# ruff: noqa: UP006, UP007, UP035, UP045

SCALARS: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str, "Path": str, "PathLike": str}
SEQUENCES = {"list", "List", "Sequence", "MutableSequence", "tuple", "Tuple"}
MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping"}
NONE = type(None)


@dataclass(frozen=True)
class Parameter:
    name: str
    type: Any  # a type OmegaConf checks, or Any
    required: bool  # no default in the signature


class SignatureError(Exception):
    """The target's source cannot be found or read (its option is then checked against its own keys only)."""


def parameters(target: str) -> list[Parameter]:
    """The named parameters of `target` (a dotted path to a class or function), in signature order; a class's
    are its `__init__`'s, after those of its base class's `__init__` where it passes `**kwargs` on to it."""
    module, _, name = target.rpartition(".")
    tree, node = find_definition(module, name)
    return parameters_of(tree, node)


def parameters_of(tree: ast.Module, node: ast.AST) -> list[Parameter]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return list(arguments(node, skip_first=False))
    assert isinstance(node, ast.ClassDef)
    init = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"), None)
    if init is None:  # inherited: the first base's (object's: none)
        return base_parameters(tree, node)
    own = list(arguments(init, skip_first=True))
    if init.args.kwarg is None:
        return own
    # the base's first, as a subclass's own come after its base's (a dataclass's fields, the config's keys)
    named = {parameter.name for parameter in own}
    return [parameter for parameter in base_parameters(tree, node) if parameter.name not in named] + own


def base_parameters(tree: ast.Module, node: ast.ClassDef) -> list[Parameter]:
    if not node.bases:
        return []
    base = ast.unparse(node.bases[0])
    if base in ("object", "Generic") or base.startswith("Generic["):
        return []
    owner, _, name = base.rpartition(".")
    return parameters_of(*find_definition(owner or tree.cnnsweep_module, name))  # type: ignore[attr-defined]


def arguments(function: ast.FunctionDef, skip_first: bool) -> list[Parameter]:
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults, strict=True)) + list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    if skip_first:
        pairs = pairs[1:]  # self
    return [Parameter(arg.arg, config_type(arg.annotation), default is None) for arg, default in pairs]


def find_definition(module: str, name: str, seen: frozenset[str] = frozenset()) -> tuple[ast.Module, ast.AST]:
    """The module's syntax tree and the class or function `name` defined there or imported into it."""
    if module in seen:
        raise SignatureError(f"{module}.{name}: import cycle")
    tree = parse_module(module)
    for statement in tree.body:
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef)) and statement.name == name:
            return tree, statement
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                if (alias.asname or alias.name) == name:
                    source = absolute_module(module, statement, tree)
                    return find_definition(source, alias.name, seen | {module})
    raise SignatureError(f"{name} is not defined in {module}")


def absolute_module(module: str, statement: ast.ImportFrom, tree: ast.Module) -> str:
    if not statement.level:
        return statement.module or ""
    package = module if getattr(tree, "cnnsweep_is_package", False) else module.rpartition(".")[0]
    for _ in range(statement.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{statement.module}" if statement.module else package


@functools.cache
def parse_module(module: str) -> ast.Module:
    path, is_package = source_file(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    tree.cnnsweep_module, tree.cnnsweep_is_package = module, is_package  # type: ignore[attr-defined]
    return tree


def source_file(module: str) -> tuple[Path, bool]:
    """The module's .py file, found without importing it or its packages (torch's import takes seconds)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name: finds, imports nothing
    if spec is None or not spec.submodule_search_locations and rest:
        raise SignatureError(f"module {module} not found")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec.submodule_search_locations else None
    if folder is None:
        return Path(spec.origin or ""), False
    for part in rest:
        folder = folder / part
    if (folder / "__init__.py").is_file():
        return folder / "__init__.py", True
    if folder.with_suffix(".py").is_file():
        return folder.with_suffix(".py"), False
    raise SignatureError(f"module {module} has no Python source")


def config_type(annotation: ast.expr | None) -> Any:
    """The OmegaConf type of an annotation (a string annotation is parsed first); Any where none fits."""
    if annotation is None:
        return Any
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return config_type(ast.parse(annotation.value, mode="eval").body)
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        return NONE
    if isinstance(annotation, (ast.Name, ast.Attribute)):
        return SCALARS.get(last_name(annotation), Any)
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return union([config_type(annotation.left), config_type(annotation.right)])
    if isinstance(annotation, ast.Subscript):
        base = last_name(annotation.value)
        items = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        if base == "Optional":
            return union([config_type(items[0]), NONE])
        if base == "Union":
            return union([config_type(item) for item in items])
        if base in SEQUENCES:
            kinds = {config_type(item) for item in items if not is_ellipsis(item)}
            return List[kinds.pop()] if len(kinds) == 1 else List[Any]
        if base in MAPPINGS and len(items) == 2:
            return Dict[str, config_type(items[1])]
        if base == "Literal":
            kinds = {type(item.value) for item in items if isinstance(item, ast.Constant)}
            return kinds.pop() if len(kinds) == 1 else Any
    return Any


def union(kinds: list[Any]) -> Any:
    """One config type for a union: its arms other than None and than types a config cannot hold (a tensor in
    `float | Tensor`); Optional when None is an arm; Any when two config types remain (`bool | str`)."""
    flat = [arm for kind in kinds for arm in (kind.__args__ if is_union(kind) else (kind,))]
    optional = NONE in flat
    concrete = list(dict.fromkeys(arm for arm in flat if arm is not NONE and arm is not Any))
    kind = concrete[0] if len(concrete) == 1 else Any
    return Optional[kind] if optional and kind is not Any else kind


def is_union(kind: Any) -> bool:
    return getattr(kind, "__origin__", None) is Union


def is_ellipsis(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def last_name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
