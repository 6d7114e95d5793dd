"""`--help` that shows every option's default, for every nodecompat command.

argparse's ArgumentDefaultsHelpFormatter also prints `(default: None)` and `(default: False)` for flags
and unset options, which says nothing; this one adds `(default: X)` only when there is a value to show
and the help text does not already state its default.
"""

from __future__ import annotations

import argparse
from typing import Any


def _has_value(default: object) -> bool:
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, list | tuple | str) and not default)


class HelpFormatter(argparse.HelpFormatter):
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
