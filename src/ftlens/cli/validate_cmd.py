"""``ftlens validate``: sanity checks of the measures on a user's own model."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import common
from ftlens.cli.app import app
from ftlens.cli.common import console, fail_on_ftlens_error
from ftlens.settings import PAPER


@app.command("validate")
@fail_on_ftlens_error
def validate_cmd(
    model: str = typer.Argument(..., help="Model SPEC (timm:NAME, ftlens:PRESET, a checkpoint, RUN_DIR@EPOCH)."),
    data: str = common.data_option(),
    layers: list[str] = common.layers_option(),
    images: int = typer.Option(None, "--images", help="Images per seed (a quick check: 100 by default, or the whole "
                               "test split when smaller)."),
    seeds: int = typer.Option(2, "--seeds", help="Seeds: each draws its own image sample and inversion start "
                              "(a quick check: 2)."),
    steps: int = common.steps_option(),
    step_size: float = common.step_size_option(),
    residual_threshold: float = typer.Option(PAPER.residual_threshold, "--residual-threshold",
                                             help="Largest mean relative residual of a converged inversion."),
    image_size: str = common.image_size_option(),
    tokens: str = common.tokens_option(),
    device: str = common.device_option(),
    cache_dir: Path = common.cache_dir_option(),
    no_cache: bool = common.no_cache_option(),
    data_dir: Path = common.data_dir_option(),
    out: Path = typer.Option(None, "--out", help="Also write the table as CSV here."),
) -> None:
    """Check the measures on MODEL: an exact copy gives 0, a random-init copy is clearly different,
    shuffled image order is detected as mismatched, and the inversions converge at these settings.

    Prints one table, pass or fail per check; exits 1 when a check fails."""
    from rich import box
    from rich.table import Table

    from ftlens import io
    from ftlens.checks import cli_options
    from ftlens.data import get_dataset
    from ftlens.invariance.pool import image_pool
    from ftlens.models import load_model
    from ftlens.validate import validate

    cli_options(out=None, images=images, seeds=seeds, steps=steps, step_size=step_size)
    layer_list = common.layer_list(layers)
    data = data or common.default_data(model)
    m = load_model(model, layers=layer_list, device=common.resolve_device(device), tokens=tokens,
                   **common.image_size_kwargs(image_size))
    ds = get_dataset(data, split="test", image_size=tuple(m.input_size[1:]), data_dir=data_dir)
    images = min(100, len(ds)) if images is None else common.images_for(images, len(ds), data)
    pool = image_pool(ds, images, seeds)
    cache = None if no_cache else (cache_dir if cache_dir is not None else True)
    table = validate(m, pool.images, layers=layer_list, n_images=images, seeds=seeds, steps=steps,
                     step_size=step_size, residual_threshold=residual_threshold, cache=cache)
    rich_table = Table(title=f"ftlens validate {model} on {data}: {images} images x {seeds} seeds, {steps} steps",
                       box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("check", "layer", "value", "criterion", "result"):
        rich_table.add_column(col, justify="left" if col in ("check", "criterion") else "right")
    for row in table.itertuples():
        rich_table.add_row(row.check, str(row.layer), f"{row.value:.4g}", row.criterion,
                           "[green]pass[/green]" if row.passed else "[red]FAIL[/red]")
    console.print(rich_table)
    if out is not None:
        io.write_table(Path(out), table.set_index("check"))
    failed = int((~table["passed"]).sum())
    console.print(f"{len(table) - failed} of {len(table)} checks passed")
    if failed:
        raise typer.Exit(code=1)
