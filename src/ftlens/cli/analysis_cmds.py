"""``ftlens dynamics`` and ``ftlens datasets``."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import app
from ftlens.cli.common import console, fail_on_ftlens_error, image_size_kwargs, parse_list
from ftlens.errors import ConfigError
from ftlens.settings import PAPER


@app.command("dynamics")
@fail_on_ftlens_error
def dynamics_cmd(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A finetuning run directory."),
    pretrained: str = typer.Option(None, "--pretrained", help="Reference model spec (default RUN_DIR@0)."),
    image_size: str = typer.Option(None, "--image-size", help="Input resolution H or H,W (default: the model's own, or its checkpoint's)."),
    data: str = typer.Option(None, "--data", help="Dataset for the images (default: the run's dataset)."),
    images: int = typer.Option(PAPER.images, "--images", help="Images per seed (the paper: 500)."),
    seeds: int = typer.Option(PAPER.seeds, "--seeds", help="Seeds (each: its own image sample and start noise)."),
    steps: int = typer.Option(PAPER.steps, "--steps", help="Inversion steps (the paper: 50)."),
    step_size: float = typer.Option(PAPER.step_size, "--step-size", help="L2 length of each inversion step."),
    epochs: str = typer.Option(None, "--epochs", help="Comma-separated epochs (default: all)."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers or globs."),
    debiased: bool = typer.Option(False, "--debiased", help="Debiased CKA inside STIR and cka divergence."),
    data_dir: Path = typer.Option(None, "--data-dir"),
    out: Path = typer.Option(None, "--out", help="Output directory (default RUN_DIR/dynamics)."),
) -> None:
    """Learning, forgetting and cka divergence of every epoch of a run against the pretrained model.

    Writes OUT/dynamics.csv (one row per epoch and layer, with subspace similarity), and when the
    run logged corrupted accuracy, OUT/correlation.csv (the paper's hypothesis grid).
    """
    import yaml

    from ftlens import io
    from ftlens.analysis.dynamics import corrupted_accuracy, dynamics, run_metrics
    from ftlens.data import get_dataset
    from ftlens.invariance.pool import image_pool
    from ftlens.models import load_model

    pretrained = pretrained or f"{run_dir}@0"
    pt = load_model(pretrained, layers=parse_list(layers), **image_size_kwargs(image_size))
    if data is None:
        cfg_path = run_dir / "config.yaml"
        data = yaml.safe_load(cfg_path.read_text()).get("data") if cfg_path.exists() else None
        if data is None:
            raise ConfigError("the run records no dataset; pass --data")
    ds = get_dataset(data, split="test", image_size=pt.input_size[1:], data_dir=data_dir)
    x = image_pool(ds, min(images, len(ds)), seeds).images
    out = out or run_dir / "dynamics"
    table = dynamics(run_dir, pt, x, epochs=parse_list(epochs, int), layers=parse_list(layers), out=out,
                     seeds=seeds, n_images=min(images, len(x)), steps=steps, step_size=step_size, debiased=debiased)
    io.write_json(Path(out) / "dynamics.json", {
        "kind": "ftlens.dynamics", "run": str(Path(run_dir).resolve()), "pretrained": pretrained, "data": data,
        "images": images, "seeds": seeds, "steps": steps, "step_size": step_size,
        "estimator": "debiased" if debiased else "biased", "versions": io.versions()})
    summary = table.groupby("epoch")[["learning", "forgetting", "cka_divergence"]].mean()
    console.print("[bold]mean over layers, per epoch[/bold]")
    console.print(summary.round(4).to_string())
    metrics = run_metrics(run_dir)
    if "corrupted_acc_mean" in metrics.columns:
        from ftlens.analysis.correlation import correlation_table

        grid = correlation_table(table, corrupted_accuracy(metrics))
        io.write_table(Path(out) / "correlation.csv", grid)
        console.print(f"correlation grid: {len(grid)} hypotheses -> {Path(out) / 'correlation.csv'}")
    console.print(f"saved {Path(out) / 'dynamics.csv'}")


@app.command("datasets")
def datasets_cmd() -> None:
    """List the datasets ftlens can load (embedded ones work offline)."""
    from ftlens.data import list_datasets

    for name in list_datasets():
        console.print(name)
