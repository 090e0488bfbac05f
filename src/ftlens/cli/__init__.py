"""The ``ftlens`` command line: a thin layer over the library.

Each sub-command lives in its own module under :mod:`ftlens.cli` and registers
itself on :data:`app`; this file only collects them.
"""

from __future__ import annotations

import typer

from ftlens._version import __version__

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


# Sub-commands register themselves on import.
from ftlens.cli import (  # noqa: E402,F401
    analysis_cmds,
    compare_cmd,
    demo_cmd,
    finetune_cmd,
    models_cmds,
    validate_cmd,
)

#: ``ftlens --help`` lists the commands in the order of a researcher's workflow
WORKFLOW_ORDER = ("datasets", "layers", "finetune", "cka", "compare", "dynamics", "report", "demo", "run", "validate")


def _order_commands() -> None:
    rank = {name: k for k, name in enumerate(WORKFLOW_ORDER)}

    def key(info) -> tuple[int, str]:
        name = info.name or (info.callback.__name__ if info.callback else "")
        return (rank.get(name, len(rank)), name)

    app.registered_commands.sort(key=key)


_order_commands()


def main() -> None:
    app()
