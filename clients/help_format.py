"""`--help` that shows every option's default, for every nodecompat command.

argparse's ArgumentDefaultsHelpFormatter also prints `(default: None)` and `(default: False)` for flags
and unset options, which says nothing; this one adds `(default: X)` only when there is a value to show
and the help text does not already state its default.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _has_value(default: object) -> bool:
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, list | tuple | str) and not default)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() gives it ($COLUMNS, else stdout's terminal, else
    80), without importing shutil (with bz2 and lzma): argparse's formatter asks for it on every
    add_argument, so each CLI start would pay for that import."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and _has_value(action.default) and "(default" not in text:
            text = f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose help (and its sub-commands' help) uses HelpFormatter."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)
