"""``ftlens layers`` and ``ftlens cka``: look at a model's layers, compare two models by CKA."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import app
from ftlens.cli.common import console, fail_on_ftlens_error, image_size_kwargs, parse_list
from ftlens.errors import ConfigError


@app.command("layers")
@fail_on_ftlens_error
def layers_cmd(
    model: str = typer.Argument(..., help="Model spec: timm:NAME, ftlens:PRESET, a checkpoint, RUN_DIR@EPOCH."),
    all_modules: bool = typer.Option(False, "--all", help="List every hookable module, not only the defaults."),
) -> None:
    """Print the model's layers (in execution order) with their output shapes."""
    from rich.table import Table

    from ftlens.models import load_model

    wrapper = load_model(model)
    names = wrapper.resolve_layers(["*"]) if all_modules else wrapper.layers + ["pre_logits"]
    names = [n for n in names if n in wrapper.available_layers]
    shapes = wrapper.layer_shapes(names)
    table = Table(title=f"{wrapper.name}: input {wrapper.input_size}, mean {wrapper.mean}, std {wrapper.std}")
    table.add_column("#", justify="right")
    table.add_column("layer")
    table.add_column("output shape (per image)")
    table.add_column("features", justify="right")
    default = set(wrapper.layers)
    for i, name in enumerate(names):
        shape = shapes[name]
        feats = 1
        for s in shape:
            feats *= s
        mark = "" if name in default else " (not default)"
        table.add_row(str(i), name + mark, str(tuple(shape)), f"{feats:,}")
    console.print(table)


@app.command("cka")
@fail_on_ftlens_error
def cka_cmd(
    model_a: str = typer.Argument(..., help="First model spec."),
    model_b: str = typer.Argument(..., help="Second model spec."),
    image_size: str = typer.Option(None, "--image-size", help="Input resolution H or H,W (default: the model's own, or its checkpoint's)."),
    data: str = typer.Option("digits", "--data", help="Dataset name (see `ftlens datasets`)."),
    images: int = typer.Option(256, "--images", help="Number of test images."),
    layers: str = typer.Option(None, "--layers", help="Comma-separated layers or globs (default: every block)."),
    debiased: bool = typer.Option(False, "--debiased", help="Debiased (unbiased HSIC) CKA instead of the biased one."),
    seed: int = typer.Option(0, "--seed"),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where datasets live (or are downloaded to)."),
    out: Path = typer.Option(None, "--out", help="Directory for cka.csv and cka.png."),
) -> None:
    """Linear CKA between every layer of MODEL_A and every layer of MODEL_B on the same images."""
    from ftlens import io
    from ftlens.data import get_dataset, sample_images
    from ftlens.models import load_model
    from ftlens.report.figures import cka_heatmap, save_figure
    from ftlens.similarity import cka_matrix

    size = image_size_kwargs(image_size)
    a = load_model(model_a, layers=parse_list(layers), **size)
    b = load_model(model_b, layers=parse_list(layers), **size)
    if a.input_size != b.input_size:
        raise ConfigError(f"input sizes differ: {a.input_size} vs {b.input_size}")
    dataset = get_dataset(data, split="test", image_size=a.input_size[1:], data_dir=data_dir, seed=seed)
    x, _ = sample_images(dataset, images, seed=seed)
    ra = a.representations(x, progress=True)
    rb = b.representations(x, progress=True)
    matrix = cka_matrix(ra, rb, debiased=debiased)
    estimator = "debiased" if debiased else "biased"
    console.print(f"[bold]linear CKA ({estimator}), {images} images of {data}[/bold]")
    console.print(matrix.round(3).to_string())
    if out is not None:
        io.write_table(Path(out) / "cka.csv", matrix)
        io.write_json(Path(out) / "cka.json", {
            "kind": "ftlens.cka", "model_a": a.name, "model_b": b.name, "spec_a": model_a, "spec_b": model_b,
            "data": data, "images": int(x.shape[0]), "seed": seed, "estimator": estimator,
            "similarity": f"linear CKA ({estimator} HSIC), float64", "versions": io.versions()})
        fig = cka_heatmap(matrix, title=f"linear CKA ({estimator}): {a.name} vs {b.name}",
                          xlabel=f"layer of {b.name}", ylabel=f"layer of {a.name}")
        save_figure(fig, Path(out) / "cka.png")
        console.print(f"saved {Path(out) / 'cka.csv'} and cka.png")
