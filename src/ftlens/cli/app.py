"""The ``ftlens`` Typer application that every sub-command registers itself on."""

from __future__ import annotations

import typer

from ftlens._version import __version__
from ftlens.warn import use_one_line_format

app = typer.Typer(
    name="ftlens",
    help="What did finetuning change inside a vision model, layer by layer?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ftlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """ftlens: invariances (STIR), CKA and robustness of finetuned vision models."""
    use_one_line_format()  # warnings as "Category: message", no source line in logs
