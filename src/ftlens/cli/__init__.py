"""The ``ftlens`` command line: a thin layer over the library.

Each sub-command lives in its own module under :mod:`ftlens.cli` and registers
itself on :data:`~ftlens.cli.app.app`; this file only collects them.
"""

from __future__ import annotations

# first, so that ``ftlens.cli.app`` is the app while the commands import (also as ``from ftlens.cli import app``)
from ftlens.cli.app import app
from ftlens.warn import use_one_line_format

# isort: split
# Sub-commands register themselves on import.
from ftlens.cli import (  # noqa: F401
    analysis_cmds,
    compare_cmd,
    demo_cmd,
    finetune_cmd,
    models_cmds,
    validate_cmd,
    weights_cmd,
)

#: ``ftlens --help`` lists the commands in the order of a researcher's workflow
WORKFLOW_ORDER = ("datasets", "layers", "finetune", "cka", "compare", "weights", "dynamics", "report", "demo", "run", "validate")


def _order_commands() -> None:
    rank = {name: k for k, name in enumerate(WORKFLOW_ORDER)}

    def key(info) -> tuple[int, str]:
        name = info.name or (info.callback.__name__ if info.callback else "")
        return (rank.get(name, len(rank)), name)

    app.registered_commands.sort(key=key)


_order_commands()


def main() -> None:
    use_one_line_format()
    app()
