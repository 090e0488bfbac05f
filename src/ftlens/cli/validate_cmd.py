"""``ftlens validate``: sanity checks of the measures on a user's own model."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import app
from ftlens.cli.common import console, fail_on_ftlens_error, parse_list
from ftlens.errors import ConfigError
from ftlens.settings import PAPER


@app.command("validate")
@fail_on_ftlens_error
def validate_cmd(
    model: str = typer.Argument(..., help="Model SPEC (timm:NAME, ftlens:PRESET, a checkpoint, RUN_DIR@EPOCH)."),
    data: str = typer.Option(..., "--data", help="Dataset for the images (`ftlens datasets` lists them)."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers or globs (default: every block)."),
    images: int = typer.Option(100, "--images", help="Images per seed."),
    seeds: int = typer.Option(2, "--seeds", help="Seeds (each: its own images and start noise)."),
    steps: int = typer.Option(PAPER.steps, "--steps", help="Inversion steps (the paper: 50)."),
    step_size: float = typer.Option(PAPER.step_size, "--step-size", help="L2 length of each inversion step."),
    residual_threshold: float = typer.Option(PAPER.residual_threshold, "--residual-threshold",
                                             help="Largest mean relative residual of a converged inversion."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cpu)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Inversion cache (default $FTLENS_CACHE_DIR or "
                                   "~/.cache/ftlens)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the inversion cache."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where datasets live ($FTLENS_DATA_DIR)."),
    out: Path = typer.Option(None, "--out", help="Also write the table as CSV here."),
) -> None:
    """Check the measures on MODEL: an exact copy gives 0, a random-init copy is clearly different,
    shuffled image order is detected as mismatched, and the inversions converge at these settings.

    Prints one table, pass or fail per check; exits 1 when a check fails."""
    from rich import box
    from rich.table import Table

    from ftlens import io
    from ftlens.data import get_dataset
    from ftlens.invariance.pool import image_pool
    from ftlens.models import load_model
    from ftlens.validate import validate

    m = load_model(model, layers=parse_list(layers), device=device or "cpu")
    ds = get_dataset(data, split="test", image_size=tuple(m.input_size[1:]), data_dir=data_dir)
    if images > len(ds):
        raise ConfigError(f"dataset {data!r} (test split) has only {len(ds)} images; use --images {len(ds)} or fewer")
    pool = image_pool(ds, images, seeds)
    cache = None if no_cache else (cache_dir if cache_dir is not None else True)
    table = validate(m, pool.images, layers=parse_list(layers), n_images=images, seeds=seeds, steps=steps,
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
