"""``--help`` that reads at 80 columns: no option name or default is ever cut.

:class:`PanelledCommand` lays a command's options out as definition lists
(the option and its metavar, then its description, wrapped to the terminal),
one section per help panel, in the order the panels first appear: the core's
options first, then each plugin's settings. In a plugin's panel each setting
is one line, its option and default; ``metalora settings NAME`` describes
them in full.
"""

from __future__ import annotations

import re
import textwrap

from typer import _click as click
from typer.core import TyperCommand

PLUGIN_PANEL = "Settings of "
"""The title prefix of a panel of plugin settings (see :func:`metalora.cli.options`)."""
DEFAULT = re.compile(r"\[default: (?P<value>[^\]]*)\]")
KEEP_TOGETHER = {" ": "\N{NO-BREAK SPACE}", "-": "\N{NON-BREAKING HYPHEN}"}
"""Stand-ins, while text is wrapped, for the spaces of a ``[default: ...]`` and for every
hyphen, so that neither a default nor a name (``structured-lora``) is split."""
SHORT_DEFAULT = 36
"""A ``[default: ...]`` up to this long is kept on one line; a longer one (a default per
owner) wraps between its words like the description."""


def unbreakable(text: str) -> str:
    """``text`` with its defaults and hyphenated words made unbreakable for wrapping."""
    text = text.replace("-", KEEP_TOGETHER["-"])
    return DEFAULT.sub(lambda m: m[0].replace(" ", KEEP_TOGETHER[" "])
                       if len(m[0]) <= SHORT_DEFAULT else m[0], text)


def breakable(formatter: click.HelpFormatter) -> None:
    """Undo :func:`unbreakable` in what ``formatter`` has written."""
    for plain_char, stand_in in KEEP_TOGETHER.items():
        formatter.buffer[:] = [part.replace(stand_in, plain_char) for part in formatter.buffer]


def plain(text: str) -> str:
    """Help text written for rich markup, as plain text (``\\[`` is a literal ``[``)."""
    return text.replace("\\[", "[")


class PanelledCommand(TyperCommand):
    """A Typer command with the help layout of the module."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Usage, description, one section per panel, epilog (click's layout, no boxes)."""
        super(TyperCommand, self).format_help(ctx, formatter)
        breakable(formatter)

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The description, its markup read as plain text."""
        if self.help:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(plain(self.help))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """One section per help panel; a plugin's settings one line each."""
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            names, text = record[0], plain(record[1])
            panel = getattr(param, "rich_help_panel", None) or "Options"
            if panel.startswith(PLUGIN_PANEL):
                found = DEFAULT.search(text)
                text = f"[default: {found['value']}]" if found else ""
            text = unbreakable(text)
            panels.setdefault(panel, []).append((names, text))
        for title, rows in panels.items():
            formatter.write_paragraph()
            indent = " " * formatter.current_indent
            for line in textwrap.wrap(f"{title}:", width=formatter.width - len(indent),
                                      subsequent_indent="  ", break_on_hyphens=False,
                                      break_long_words=False):
                formatter.write(f"{indent}{line}\n")  # a long title (many owners) wraps
            with formatter.indentation():
                formatter.write_dl(rows)
        if any(title.startswith(PLUGIN_PANEL) for title in panels):
            formatter.write_paragraph()
            formatter.write_text("`metalora settings NAME` describes the settings of plugin "
                                 "NAME in full.")
