"""``ftlens weights``: what finetuning changed in the weights, per layer."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import common
from ftlens.cli.app import app
from ftlens.cli.common import console, fail_on_ftlens_error


@app.command("weights")
@fail_on_ftlens_error
def weights_cmd(
    pretrained: str = typer.Argument(..., help="Pretrained model SPEC (e.g. RUN_DIR@0, timm:NAME, a checkpoint)."),
    finetuned: str = typer.Argument(..., help="Finetuned model SPEC (e.g. RUN_DIR@5; peft:ADAPTER_DIR for a LoRA "
                                    "finetune of PRETRAINED)."),
    out: Path = typer.Option(None, "--out", help="Output folder for weights.csv, weight_tensors.csv, "
                             "weight_spectrum.csv, weights.json and weights.png (`ftlens report OUT` reads it)."),
    layers: list[str] = common.layers_option(),
    no_spectrum: bool = typer.Option(False, "--no-spectrum", help="Skip the singular spectra of ΔW (the SVDs)."),
    image_size: str = common.image_size_option(),
) -> None:
    """Per layer: ||W_ft - W_pt|| / ||W_pt||, cosine, spectrum and effective rank of ΔW, BatchNorm statistics moved.

    Float64; the layers and their numbers are those of every other command. For a LoRA finetune
    (peft:ADAPTER_DIR) the adapted weights' ΔW is the adapter's own B A * scale."""
    from ftlens.checks import cli_options

    cli_options(out=out)
    from ftlens import progress
    from ftlens.analysis.weight_space import weight_diff
    from ftlens.layers import layer_title
    from ftlens.models import load_model
    from ftlens.report.figures import fmt_num, save_figure

    layer_list = common.layer_list(layers)
    progress.stage(f"loading {pretrained} and {finetuned}")
    pt = load_model(pretrained, layers=layer_list, **common.image_size_kwargs(image_size))
    progress.stage("differences, float64" + ("" if no_spectrum else ", with the singular spectrum of every ΔW"))
    result = weight_diff(pt, finetuned, layers=layer_list, spectrum=not no_spectrum)
    shown = ["relative_change", "cosine", "effective_rank", "stable_rank", "bn_mean_shift"]
    table = result.per_layer[[c for c in shown if result.per_layer[c].notna().any()]]
    table.index = [layer_title(name, int(n)) for name, n in zip(table.index, result.per_layer["layer_number"],
                                                                strict=True)]
    console.print(f"[bold]weight change per layer: {result.config['finetuned']['name']} vs "
                  f"{result.config['pretrained']['name']}[/bold]")
    console.print(table.map(lambda v: fmt_num(v, 4)).to_string())
    total = result.config["total"]
    console.print(f"all {total['n_parameters']} parameters with the same shape: relative change "
                  f"{fmt_num(total['relative_change'], 4)}, cosine {fmt_num(total['cosine'], 6)}")
    for name, status in result.config["differs"]:
        console.print(f"{name}: {status} (not compared)")
    if out is not None:
        result.save(out)
        save_figure(result.plot(), Path(out) / "weights.png")
        console.print(f"saved {Path(out) / 'weights.csv'}, weight_tensors.csv, weight_spectrum.csv, weights.json "
                      "and weights.png")
