"""Name and text templates: `{stem} wallpaper`, `{name}.link.json`, `{short_link}`.

Templates use `str.format` syntax restricted to plain placeholders from
`KNOWN_PLACEHOLDERS` (no attribute access, indexing, conversions or format specs), so a
rule file in a watched folder can never reach into Python objects. Literal braces are
written `{{` and `}}`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

KNOWN_PLACEHOLDERS: frozenset[str] = frozenset(
    {"name", "stem", "ext", "folder", "relpath", "link", "short_link", "id"}
)

# The placeholders `file_context` fills from a file's name and place: text, not URL syntax.
FILE_PLACEHOLDERS: frozenset[str] = frozenset({"name", "stem", "ext", "folder", "relpath"})
# What may stay as it is, in a URL's path or in its query: "/" between segments, and the
# characters that mean nothing in either ("&", "=", "+", ";" and "," split a query: encoded).
_URL_TEXT_SAFE = "/!$'()*:@~"

_FORMATTER = string.Formatter()


def validate(template: str) -> list[str]:
    """Given a template, return the placeholders it uses, in order.

    Raise ValueError naming the problem if the braces are unbalanced or a placeholder is
    unknown or carries a conversion or format spec.
    """
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}; write a literal brace as {{{{ or }}}}") from exc
    used: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in KNOWN_PLACEHOLDERS:
            known = " ".join(f"{{{name}}}" for name in sorted(KNOWN_PLACEHOLDERS))
            raise ValueError(f"unknown placeholder {{{field}}}; known: {known}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} takes no conversion or format spec; write {{{field}}}")
        used.append(field)
    return used


def render(template: str, context: Mapping[str, str]) -> str:
    """Given a template and the values of its placeholders, return the text.

    Raise ValueError if the template is invalid (see `validate`) or uses a placeholder
    that `context` has no value for.
    """
    values: dict[str, str] = {}
    for field in validate(template):
        if field not in context:
            raise ValueError(f"placeholder {{{field}}} has no value here")
        values[field] = context[field]
    return template.format_map(values)


def file_context(path: Path, folder_root: Path) -> dict[str, str]:
    """The file placeholders for `path` inside the watched folder `folder_root`.

    `ext` has no dot; `folder` is the name of the directory holding the file; `relpath`
    is relative to the root with "/" separators. Raise ValueError if `path` is not below
    `folder_root`.
    """
    return {
        "name": path.name,
        "stem": path.stem,
        "ext": path.suffix[1:],
        "folder": path.parent.name,
        "relpath": path.relative_to(folder_root).as_posix(),
    }


def render_url(template: str, context: Mapping[str, str]) -> str:
    """`render` for a URL template (`fromurl`): the file placeholders it uses are
    percent-encoded to stand in a URL's path or query, so a "#", "?", "&" or "%" in a file's
    name stays part of the name ("50%20off.png" is "50%2520off.png", not "50 off.png");
    links and ids are URLs or plain already."""
    encoded = {
        field: quote(context[field], safe=_URL_TEXT_SAFE)
        for field in validate(template)
        if field in FILE_PLACEHOLDERS and field in context
    }
    return render(template, {**context, **encoded} if encoded else context)
