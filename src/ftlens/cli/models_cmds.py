"""``ftlens layers`` and ``ftlens cka``: look at a model's layers, compare two models by CKA."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import common
from ftlens.cli.app import app
from ftlens.cli.common import console, fail_on_ftlens_error


@app.command("layers")
@fail_on_ftlens_error
def layers_cmd(
    model: str = typer.Argument(..., help="Model spec: timm:NAME, ftlens:PRESET, a checkpoint, RUN_DIR@EPOCH."),
    all_modules: bool = typer.Option(False, "--all", help="List every module that runs in a forward pass, not only "
                                     "the analysis layers."),
    device: str = common.device_option(),
    image_size: str = common.image_size_option(),
) -> None:
    """Print the model's layers (in execution order) with their 1-based numbers and output shapes.

    The number is the one every table and figure uses (layer 1 = blocks.0); modules that are
    not analysis layers (--all) have none.
    """
    from rich.table import Table

    from ftlens.layers import layer_numbers
    from ftlens.models import load_model

    wrapper = load_model(model, device=common.resolve_device(device), **common.image_size_kwargs(image_size))
    default = list(wrapper.default_layers)
    if all_modules:
        ran = set(wrapper.trace.order)  # modules that produce a tensor in a forward pass
        names = [n for n in wrapper.available_layers if n in ran or n == "pre_logits"]
        names = wrapper.resolve_layers(names)
    else:
        names = default + ["pre_logits"]
    names = [n for n in names if n in wrapper.available_layers]
    shapes = wrapper.layer_shapes(names)
    numbers = dict(zip(names, layer_numbers(names, wrapper), strict=True))
    if hasattr(wrapper, "max_length"):  # a text model
        title = (f"{wrapper.name}: text of {wrapper.max_length} tokens (word vectors of {wrapper.embed_dim}), "
                 f"pooling {wrapper.module.pool.mode}")
    else:
        title = f"{wrapper.name}: input {wrapper.input_size}, mean {wrapper.mean}, std {wrapper.std}"
    table = Table(title=title)
    table.add_column("layer", justify="right")
    table.add_column("name")
    table.add_column("output shape (per image)")
    table.add_column("features", justify="right")
    for name in names:
        shape = shapes[name]
        feats = 1
        for s in shape:
            feats *= s
        number = str(numbers[name]) if name in default else ""
        mark = "" if name in default or name == "pre_logits" else " (not default)"
        table.add_row(number, name + mark, str(tuple(shape)), f"{feats:,}")
    console.print(table)


@app.command("cka")
@fail_on_ftlens_error
def cka_cmd(
    first: str = typer.Argument(..., help="First model spec (the rows)."),
    second: str = typer.Argument(..., help="Second model spec (the columns)."),
    out: Path = typer.Option(None, "--out", help="Output folder for cka.csv, cka.json and cka.png "
                             "(`ftlens report OUT` reads it)."),
    data: str = common.data_option(),
    layers: list[str] = common.layers_option(),
    images: int = common.images_option(),
    debiased: bool = common.debiased_option(),
    measure: str = typer.Option(None, "--measure", help="A registered similarity measure instead of linear "
                                "CKA, e.g. rbf_cka or procrustes_distance (an unknown name lists them all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image sample."),
    estimator: str = typer.Option("auto", "--estimator", help="exact (all images at once: biased, or --debiased), "
                                  "minibatch (Nguyen et al.'s HSIC_1 averaged over batches of --batch-size; memory "
                                  "flat in the number of images) or auto (exact when it fits in 1 GiB)."),
    batch_size: int = common.batch_size_option(),
    device: str = common.device_option(),
    image_size: str = common.image_size_option(),
    tokens: str = common.tokens_option(),
    data_dir: Path = common.data_dir_option(),
) -> None:
    """Linear CKA (or --measure) between every layer of FIRST and every layer of SECOND on the same images."""
    from ftlens.checks import cli_options

    cli_options(out=out, images=images, batch_size=batch_size)
    from ftlens import progress
    from ftlens.cka import CKA, resolve_measure

    chosen = resolve_measure(measure, debiased)  # an unknown name fails before anything is loaded
    from ftlens.data import get_dataset, sample_images
    from ftlens.report.figures import save_figure

    device = common.resolve_device(device)
    layer_list = common.layer_list(layers)
    progress.stage(f"loading {first} and {second}")
    from ftlens.models import load_model

    size = common.image_size_kwargs(image_size)
    cka = CKA(load_model(first, layers=layer_list, device=device, tokens=tokens, **size),
              load_model(second, layers=layer_list, device=device, tokens=tokens, **size), measure=chosen,
              device=device)
    a = cka.first
    data = common.data_for(a, data, second, first)
    dataset = get_dataset(data, split="test", image_size=a.input_size[1:], data_dir=data_dir, seed=seed)
    n = common.images_for(images, len(dataset), data)
    x, _ = sample_images(dataset, n, seed=seed)
    progress.stage(f"CKA on {n} images of {data}")
    result = cka.compare(x, batch_size=batch_size or 256, progress=True, estimator=estimator)
    result.config.update(data=data, seed=seed)
    matrix = result.matrix
    console.print(f"[bold]{result.title}, {n} images of {data}[/bold]")
    from ftlens.report.figures import fmt_num

    console.print(matrix.map(fmt_num).to_string())
    if out is not None:
        result.save(out)
        save_figure(result.plot(), Path(out) / "cka.png")
        console.print(f"saved {Path(out) / 'cka.csv'}, cka.json and cka.png")
