"""``ftlens compare``: learning, forgetting, cka divergence and InvarianceFlow of two models."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlens.cli import common
from ftlens.cli.app import app
from ftlens.cli.common import console, fail_on_ftlens_error
from ftlens.errors import ConfigError
from ftlens.settings import PAPER
from ftlens.vocabulary import FINETUNED, PRETRAINED, residual_column, stir_column


def print_summary(comparison, title: str | None = None) -> None:
    """Print the per-layer summary of a comparison as a rich table (layers numbered from 1)."""
    from rich import box
    from rich.table import Table

    from ftlens.report.figures import fmt_num, layer_title

    summary = comparison.summary()
    cfg = comparison.config
    head = title or f"{cfg['finetuned']['name']} vs {cfg['pretrained']['name']}"
    level = comparison.per_layer.attrs.get("confidence", 0.95)
    est = comparison.estimator
    similarity = f"linear CKA ({est} HSIC)" if est in ("biased", "debiased") else \
        str(cfg.get("similarity", est)).removesuffix(", float64")
    table = Table(
        title=f"{head}: {similarity}, mean [{level:.0%} interval] over {len(cfg['seeds'])} "
        f"seed(s) and image resamples, {cfg['n_images']} images, {cfg['inversion']['steps']} steps, first term "
        f"{cfg['first_term']}",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("layer", "learning", "forgetting", "cka\ndivergence", "STIR\n(pt | pt)", "STIR\n(ft | ft)",
                "residual\npt/ft", "converged"):
        table.add_column(col, justify="right", no_wrap=True)

    def pm(row, metric: str) -> str:
        mean, lo, hi = row[metric], row.get(f"{metric}_lo", float("nan")), row.get(f"{metric}_hi", float("nan"))
        return fmt_num(mean, 4) if lo != lo else f"{fmt_num(mean, 4)} [{fmt_num(lo, 4)}, {fmt_num(hi, 4)}]"

    for layer, row in summary.iterrows():
        table.add_row(
            layer_title(str(layer), int(row["layer_number"])),
            pm(row, "learning"),
            pm(row, "forgetting"),
            pm(row, "cka_divergence"),
            fmt_num(row[stir_column(PRETRAINED, PRETRAINED)]),
            fmt_num(row[stir_column(FINETUNED, FINETUNED)]),
            f"{fmt_num(row[residual_column(PRETRAINED)], 2)}/{fmt_num(row[residual_column(FINETUNED)], 2)}",
            "yes" if row.get("converged", True) else "[red]no[/red]",
        )
    console.print(table)


@app.command("compare")
@fail_on_ftlens_error
def compare_cmd(
    pretrained: str = typer.Option(..., "--pretrained", help="Pretrained model SPEC (timm:NAME, ftlens:PRESET, "
                                   "a checkpoint, RUN_DIR@EPOCH)."),
    finetuned: str = typer.Option(..., "--finetuned", help="Finetuned model SPEC (same forms)."),
    out: Path = typer.Option(..., "--out", help="Output folder: per_layer.csv, flow.csv, comparison.json, *.png "
                             "(`ftlens report OUT` reads it)."),
    data: str = common.data_option(),
    layers: list[str] = common.layers_option(),
    images: int = common.images_option(),
    seeds: int = common.seeds_option(),
    steps: int = common.steps_option(),
    schedule: str = common.schedule_option(),
    step_size: float = common.step_size_option(),
    tokens: str = common.tokens_option(),
    start: str = typer.Option(PAPER.start, "--start", help="Inversion start: noise, mixed or uniform."),
    debiased: bool = common.debiased_option(),
    measure: str = typer.Option(None, "--measure", help="The similarity inside STIR and cka divergence instead of "
                                "linear CKA: a registered similarity measure, e.g. svcca, rsa_correlation_spearman, "
                                "mutual_knn (an unknown name lists them); no image bootstrap then."),
    first_term: str = typer.Option(PAPER.first_term, "--first-term", help="measured (STIR of a layer with itself) "
                                   "or one (the paper's 1 - STIR)."),
    residual_threshold: float = typer.Option(PAPER.residual_threshold, "--residual-threshold",
                                             help="Largest mean relative inversion residual of a converged layer "
                                             "(the `converged` column)."),
    bootstrap: int = typer.Option(PAPER.bootstrap, "--bootstrap", min=0, help="Image resamples per seed for the "
                                  "95% intervals (0: over seeds only)."),
    batch_size: int = common.batch_size_option(),
    device: str = common.device_option(),
    image_size: str = common.image_size_option(),
    max_length: int | None = typer.Option(None, "--max-length", min=1, help="Text models: tokens per text for "
                                          "both (default: the finetuned model's, e.g. its run's)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast for the inversion forward (CUDA only)."),
    cache_dir: Path = common.cache_dir_option(),
    no_cache: bool = common.no_cache_option(),
    data_dir: Path = common.data_dir_option(),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    processes: int = typer.Option(1, "--processes", min=1, help="Split the inversions over N local processes "
                                  "(gloo; cpu_count/N threads each, or one GPU each with --device cuda); they "
                                  "share the cache, rank 0 merges. Under `accelerate launch` / `torchrun` the "
                                  "launcher's processes are used instead."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads per process (default: torch's, or "
                                "cpu_count/N with --processes N)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the ViT block stack (once per model; "
                                  "pays off for long runs on a GPU)."),
    tf32: bool = typer.Option(False, "--tf32", help="TF32 for float32 matmuls on CUDA."),
    batch_layers: bool = typer.Option(False, "--batch-layers", help="Invert all layers and seeds of a model in "
                                      "one staged batch per step (speed only; the same results up to rounding)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a comparison of other models already in --out."),
) -> None:
    """Learning, forgetting, cka divergence and InvarianceFlow of two models, layer by layer.

    STIR with representation inversion (2L inversions per seed). Writes OUT/*.csv,
    OUT/comparison.json, OUT/*.png and the two models' weight diff in OUT/weights (`ftlens weights`);
    `ftlens report OUT` turns them into a page.

    Sharded: `--processes N`, or `torchrun --nproc_per_node N -m ftlens compare ...` /
    `accelerate launch --multi_gpu --num_processes N -m ftlens compare ...`; every process
    inverts its share into the cache and rank 0 merges (the same result as one process)."""
    from ftlens.checks import cli_options

    cli_options(out=out, images=images, seeds=seeds, steps=steps, step_size=step_size, start=start,
                batch_size=batch_size)
    from ftlens import inversion, process_group, progress
    from ftlens.data import get_dataset
    from ftlens.invariance import compare
    from ftlens.invariance.score import stir_measure

    stir_measure(measure, debiased)  # an unknown or unfit measure fails before anything is loaded
    from ftlens.invariance.pool import image_pool
    from ftlens.models import load_model

    if schedule not in inversion.SCHEDULE_PRESETS:
        raise ConfigError(f"--schedule must be one of {', '.join(inversion.SCHEDULE_PRESETS)}, got {schedule!r}")
    ctx = process_group.context()
    sharded = ctx.distributed or processes > 1
    if sharded and no_cache:
        raise ConfigError("a sharded run (--processes N > 1, or a launcher's WORLD_SIZE > 1) needs the "
                                 "shared inversion cache; drop --no-cache (use --cache-dir to choose it)")
    if threads and not sharded:
        import torch

        torch.set_num_threads(threads)
    if tf32:
        inversion.set_tf32(True)
    layer_list = common.layer_list(layers)
    device = common.resolve_device(device)
    progress.stage(f"loading {pretrained} and {finetuned}")
    size = common.image_size_kwargs(image_size)
    length = {} if max_length is None else {"max_length": max_length}
    ft = load_model(finetuned, layers=layer_list, device=device, tokens=tokens, **size, **length)
    if not length and getattr(ft, "max_length", None) is not None:
        length = {"max_length": ft.max_length}  # a text run's length (the pretrained model's own may differ)
    pt = load_model(pretrained, layers=layer_list, device=device, tokens=tokens, **size,
                    **(length if hasattr(ft, "max_length") else {}))
    if not overwrite:
        _refuse_other_comparison(out, pt.spec, ft.spec)
    data = common.data_for(pt, data, finetuned, pretrained)  # a text model reads a text dataset
    ds = get_dataset(data, split="test", image_size=tuple(pt.input_size[1:]), data_dir=data_dir)
    images = common.images_for(images, len(ds), data)
    pool = image_pool(ds, images, seeds)  # enough for every seed to draw its own images (capped by the split)
    progress.stage(f"comparing on {images} images of {data} x {seeds} seed(s), {steps} inversion steps")
    cache = None if no_cache else (cache_dir if cache_dir is not None else True)
    with inversion.runtime(compile=compile_, batch_layers=batch_layers):
        result = compare(
            pt, ft, pool.images, processes=processes, threads=threads, layers=layer_list, seeds=seeds, n_images=images,
            steps=steps, step_size=step_size, start=start, cache=cache, debiased=debiased, first_term=first_term,
            batch_size=batch_size, autocast="bf16" if bf16 else None, device=device, progress=None,
            residual_threshold=residual_threshold, bootstrap=bootstrap,
            schedule=schedule, measure=measure,
        )
    if result is None:  # a rank other than 0 under a launcher: rank 0 merges and writes
        return
    result.config["data"] = {**pool.describe(), "name": data}
    progress.stage(f"writing {out}")
    result.save(out)
    from ftlens.analysis.weight_space import weight_diff

    weight_diff(pt, ft, layers=layer_list).save(Path(out) / "weights")  # beside forgetting in the report
    print_summary(result)
    if not no_plots:
        from ftlens.report.invariance_plots import save_comparison_plots

        title = f"{result.config['finetuned']['name']} vs {result.config['pretrained']['name']}"
        save_comparison_plots(result, out, title=title)
    t = result.config["timings"]
    dist = result.config.get("distributed")
    if dist:
        shares = ", ".join(f"rank {r['rank']}: {len(r['computed'])}" for r in dist["ranks"])
        console.print(f"sharded over {dist['world_size']} processes (inversions computed per rank: {shares})")
    console.print(
        f"{result.config['n_inversions_computed']} of {result.config['n_inversions']} inversions computed "
        f"({result.config['n_inversions'] - result.config['n_inversions_computed']} from the cache) in "
        f"{t['total_s']:.1f} s; results in [bold]{out}[/bold]"
    )


def _refuse_other_comparison(out: Path, pretrained: str, finetuned: str) -> None:
    """Never replace the comparison of *other* models silently (a rerun of the same pair may update it)."""
    import json

    saved = Path(out) / "comparison.json"
    if not saved.is_file():
        return
    try:
        cfg = json.loads(saved.read_text())
        cfg = cfg.get("config", cfg)  # comparison.json is the comparison's config
        before = (cfg["pretrained"]["spec"], cfg["finetuned"]["spec"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{out} holds a comparison.json that cannot be read; choose another --out, or pass "
                          "--overwrite to replace it") from None
    if before != (pretrained, finetuned):
        raise ConfigError(f"{out} already holds the comparison of {before[1]} vs {before[0]}; choose another --out, "
                          "or pass --overwrite to replace it")
