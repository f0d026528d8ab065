"""Every YAML file the project reads (presets, config files, profiles, a run's config.yaml), read one
way: a malformed file is one ``UserError`` line naming the file, the line and column, and the cause;
a key given twice in one mapping is refused (YAML's loaders silently keep the last).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding one key twice."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:  # the keys as written; merged ones (<<) may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader's own error says so below
            break
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {first + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse(text: str, where: str) -> object:
    """The YAML ``text`` as Python values; ``UserError`` ``WHERE: not valid YAML (line L, column C:
    cause)`` for a malformed text or a duplicated key."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        cause = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise UserError(f"{where}: not valid YAML ({at}{' '.join(str(cause).split())})") from None


def read(path: Path | str, where: str | None = None) -> object:
    """The YAML file at ``path`` as Python values (None for an empty file); ``UserError`` naming it
    (or ``where``) for one that cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{where or path}: cannot be read ({e.__class__.__name__}: {e})") from None
    return parse(text, where or str(path))
