"""``ftlens dynamics`` and ``ftlens datasets``."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import common
from ftlens.cli.app import app
from ftlens.cli.common import console, fail_on_ftlens_error


@app.command("dynamics")
@fail_on_ftlens_error
def dynamics_cmd(
    run_dir: Path = typer.Argument(..., help="A finetuning run folder (the --out of `ftlens finetune`)."),
    pretrained: str = typer.Option(None, "--pretrained", help="Pretrained model SPEC (default RUN_DIR@0, the "
                                   "run's starting point)."),
    out: Path = typer.Option(None, "--out", help="Output folder for dynamics.csv, dynamics.json and correlation.csv "
                             "(default RUN_DIR/dynamics; `ftlens report OUT` reads it)."),
    epochs: str = typer.Option(None, "--epochs", help="Comma-separated epochs (default: every epoch with a "
                               "checkpoint)."),
    data: str = typer.Option(None, "--data", help="Dataset for the images (`ftlens datasets` lists them); default: "
                             "the run's dataset."),
    layers: list[str] = common.layers_option(),
    images: int = common.images_option(),
    seeds: int = common.seeds_option(),
    steps: int = common.steps_option(),
    step_size: float = common.step_size_option(),
    debiased: bool = common.debiased_option(),
    measure: str = typer.Option(None, "--measure", help="The similarity inside STIR and cka divergence instead of "
                                "linear CKA (a registered similarity measure, as in `ftlens compare --measure`)."),
    batch_size: int = common.batch_size_option(),
    device: str = common.device_option(),
    image_size: str = common.image_size_option(),
    tokens: str = common.tokens_option(),
    cache_dir: Path = common.cache_dir_option(),
    no_cache: bool = common.no_cache_option(),
    data_dir: Path = common.data_dir_option(),
) -> None:
    """Learning, forgetting and cka divergence of every epoch of a run against the pretrained model.

    Writes OUT/dynamics.csv (one row per epoch and layer, with subspace similarity), and when the
    run logged corrupted accuracy, OUT/correlation.csv (the paper's hypothesis grid).
    """
    from ftlens.checks import cli_options

    cli_options(out=out, images=images, seeds=seeds, steps=steps, step_size=step_size, batch_size=batch_size)
    from ftlens.invariance.score import estimator_of, stir_measure

    chosen, debiased = stir_measure(measure, debiased)  # an unknown or unfit measure fails before any work
    import yaml

    from ftlens import io, progress
    from ftlens.analysis.dynamics import corrupted_accuracy, dynamics, run_metrics
    from ftlens.data import get_dataset
    from ftlens.errors import ConfigError
    from ftlens.invariance.pool import image_pool
    from ftlens.models import load_model, run_checkpoints

    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"{run_dir} is not a finetuning run folder (no checkpoints/); pass the --out of "
                          "`ftlens finetune`")
    available = sorted(run_checkpoints(run_dir))
    wanted = common.parse_list(epochs, int)
    if wanted is not None:
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise ConfigError(f"run {run_dir} has no checkpoint for epoch(s) {missing}; it has epochs "
                              f"{available[0]}..{available[-1]}" if available else f"run {run_dir} has no checkpoints")
    device = common.resolve_device(device)
    layer_list = common.layer_list(layers)
    pretrained = pretrained or f"{run_dir}@0"
    progress.stage(f"loading {pretrained}")
    pt = load_model(pretrained, layers=layer_list, device=device, tokens=tokens,
                    **common.image_size_kwargs(image_size))
    if data is None:
        cfg_path = run_dir / "config.yaml"
        data = yaml.safe_load(cfg_path.read_text()).get("data") if cfg_path.exists() else None
        if data is None:
            raise ConfigError(f"the run {run_dir} records no dataset; pass --data")
    ds = get_dataset(data, split="test", image_size=pt.input_size[1:], data_dir=data_dir)
    images = common.images_for(images, len(ds), data)
    x = image_pool(ds, images, seeds).images
    out = out or run_dir / "dynamics"
    cache = None if no_cache else (cache_dir if cache_dir is not None else True)
    progress.stage(f"dynamics of {run_dir}: {len(wanted or available)} epoch(s), {images} images of {data} x "
                   f"{seeds} seed(s), {steps} steps")
    table = dynamics(run_dir, pt, x, epochs=wanted, layers=layer_list, out=out, seeds=seeds, n_images=images,
                     steps=steps, step_size=step_size, debiased=debiased, cache=cache, batch_size=batch_size,
                     device=None if device == "cpu" else device, measure=chosen)
    io.write_json(Path(out) / "dynamics.json", {
        "kind": "ftlens.dynamics", "run": str(Path(run_dir).resolve()), "pretrained": pretrained, "data": data,
        "images": images, "seeds": seeds, "steps": steps, "step_size": step_size,
        "estimator": estimator_of(chosen, debiased), "measure": chosen.name if chosen is not None else
        ("linear_cka_debiased" if debiased else "linear_cka"), "versions": io.versions()})
    from ftlens.report.figures import fmt_num

    summary = table.groupby("epoch")[["learning", "forgetting", "cka_divergence"]].mean()
    console.print("[bold]mean over layers, per epoch[/bold]")
    console.print(summary.map(lambda v: fmt_num(v, 4)).to_string())
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
