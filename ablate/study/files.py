"""Reading study files: YAML with line numbers, command-line overrides, and space includes.

Order of operations (:func:`ablate.study.load_study`): read the study file, apply the overrides to
the document as written, then replace ``space.include`` by the axes of the files it names. The result
is the *resolved document*: what :meth:`Study.resolved_yaml` writes back and MLflow stores.
"""

from __future__ import annotations

import copy
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ablate.paths import project_root
from ablate.study.schema import Origin, StudyError

__all__ = ["MAX_FILE_BYTES", "apply_overrides", "display_path", "parse_override", "read_yaml", "resolve_space"]

MAX_FILE_BYTES = 1_000_000  # a study or space file larger than this is refused unread (real ones are a few kB)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice and reading ``1e-4`` as a number.

    PyYAML keeps the last of two equal keys silently (a repeated axis would vanish), and follows
    YAML 1.1, where a float needs a dot (``1e-4`` would be the string "1e-4").
    """


def _mapping_without_repeats(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (str, int, float, bool)) and key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {first_line[key] + 1})", key_node.start_mark
            )
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _parse(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark, start = err.problem_mark, err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        context = f" ({err.context}" if err.context else ""
        if context and start is not None and (mark is None or start.line != mark.line):
            context += f" from line {start.line + 1}"
        context += ")" if context else ""
        raise StudyError(f"{source}: {where}: malformed YAML: {err.problem}{context}") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{source}: malformed YAML: {err}") from None


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, for messages."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path, source: str) -> dict[str, Any]:
    """The mapping a YAML file holds; StudyError for a missing, special or oversized file, malformed YAML or
    another top level. Only a regular file of at most :data:`MAX_FILE_BYTES` is read."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # before opening: a FIFO would block, /dev/zero never end
            raise StudyError(f"{source}: not a regular file; a study is a YAML file")
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise StudyError(f"{source}: larger than {MAX_FILE_BYTES:,} bytes; a study file is a few kB of YAML")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise StudyError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise StudyError(f"{source}: cannot be read: {err}") from None
    doc = _parse(text, source)
    if doc is None:
        raise StudyError(f"{source}: the file is empty; a study needs at least `name:` and `question:`")
    if not isinstance(doc, dict):
        raise StudyError(f"{source}: (top level): expected a mapping of keys (name:, question:, ...), got {_kind(doc)}")
    return doc


# -- overrides -------------------------------------------------------------------------------------


def parse_override(text: str, source: str) -> tuple[str, Any]:
    """``"key.path=value"`` -> ``(key path, value)``: the one parser of every command's ``--set``.

    The value is read as YAML by the study files' own loader, so ``1e3`` and ``1e-4`` are numbers
    (``trainer.iterations=1e3`` then validates as the integer 1000), ``[0,1]`` a list, ``null`` None.
    ``source`` names the command or file in the StudyError for a malformed pair.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise StudyError(f"{source}: override {text!r}: expected KEY=VALUE, e.g. trainer.epochs=2")
    return key, _parse(raw, f"{source}: override {text!r}")


def apply_overrides(
    doc: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str
) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """A copy of ``doc`` with each ``"key.path=value"`` set (value parsed as YAML), and (key path, text) pairs.

    Dots separate sections (``trainer.warmup.policy=paper``), except below ``space``, whose keys are
    dotted config keys themselves: ``space.model.n=[3,5]`` sets the axis ``model.n``.
    """
    doc = copy.deepcopy(doc)
    applied = []
    for text in overrides:
        key, value = parse_override(text, source)
        head, _, rest = key.partition(".")
        parts = [head, rest] if head == "space" and rest else key.split(".")
        node = doc
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise StudyError(f"{source}: override {text!r}: {where} is {_kind(child)}, not a section of keys")
            node = child
        node[parts[-1]] = value
        applied.append((key, text))
    return doc, tuple(applied)


# -- includes --------------------------------------------------------------------------------------


def resolve_space(space: Any, path: Path, origin: Origin) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """The axes of ``space`` with its includes read in, and where each axis was written.

    Returns ``(axes, written)``: ``written[key]`` is ``(file, key path in that file)``, e.g.
    ``("search_spaces/depth.yaml", "model.n")`` or ``("studies/x.yaml", "space.model.n")``. Included
    files are read in order, then the study's own axes; a later one replaces an earlier one of the
    same key. Include names resolve against (1) the including file's folder, (2) ``../search_spaces/``
    beside it, (3) ``search_spaces/`` at the project root; a file never includes itself, so
    ``studies/shortcuts.yaml`` may include the space file ``shortcuts.yaml``.
    """
    return _resolve(space, path, origin.source, "space.", chain=(path.resolve(),))


def _resolve(space: Any, path: Path, source: Callable[[str], str], prefix: str, chain: tuple[Path, ...]):
    """``resolve_space`` for the file at ``path``; ``source(where)`` names that file in messages."""
    if space is None:
        return {}, {}
    if not isinstance(space, dict):
        where = prefix.rstrip(".") or "(top level)"
        problem = f"expected a mapping of dotted config key -> values, got {_kind(space)}"
        raise StudyError(f"{source(where)}: {where}: {problem}")
    where = f"{prefix}include"
    includes = space.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(name, str) for name in includes):
        problem = f"expected a list of file names, e.g. [depth.yaml], got {includes!r}"
        raise StudyError(f"{source(where)}: {where}: {problem}")
    axes: dict[str, Any] = {}
    written: dict[str, tuple[str, str]] = {}
    for name in includes:
        found = _find_include(name, path, f"{source(where)}: {where}")
        if found.resolve() in chain:
            cycle = " -> ".join(display_path(p) for p in (*chain, found))
            raise StudyError(f"{source(where)}: {where}: {name!r} includes itself ({cycle})")
        shown = f"{display_path(found)} (included by {source(where)})"
        sub_axes, sub_written = _resolve(read_yaml(found, shown), found, lambda _: shown, "", (*chain, found.resolve()))
        axes.update(sub_axes)
        written.update(sub_written)
    own = {key: value for key, value in space.items() if key != "include"}
    axes.update(own)
    written.update({key: (source(f"{prefix}{key}"), f"{prefix}{key}") for key in own})
    return axes, written


def _find_include(name: str, including: Path, where: str) -> Path:
    folder = including.resolve().parent
    candidates = [folder / name, folder.parent / "search_spaces" / name, project_root(folder) / "search_spaces" / name]
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve() != including.resolve():
            return candidate
    looked = ", ".join(dict.fromkeys(display_path(c) for c in candidates))
    raise StudyError(f"{where}: {name!r} not found; looked for {looked}")


def _kind(value: Any) -> str:
    """``a list``, ``a dict``, or ``a str ('x')`` for messages."""
    name = type(value).__name__
    return f"a {name}" if isinstance(value, (dict, list)) else f"a {name} ({value!r})"
