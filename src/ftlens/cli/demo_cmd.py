"""``ftlens demo``, ``ftlens run`` and ``ftlens report``: experiments end to end."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ftlens.cli.app import app
from ftlens.cli.common import console, fail_on_ftlens_error, parse_list
from ftlens.errors import ConfigError


def _run(config, out: Path, stages: str | None, no_cache: bool, device: str | None = None) -> None:
    from ftlens.checks import check_writable_dir
    from ftlens.experiment import STAGES, Experiment

    check_writable_dir(out, "--out")
    if device is not None:
        from ftlens.cli.common import resolve_device

        config.device = resolve_device(device)

    chosen = tuple(parse_list(stages) or STAGES)
    bad = sorted(set(chosen) - set(STAGES))
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; stages: {', '.join(STAGES)}")
    start = time.perf_counter()
    exp = Experiment(config, out, **({"cache": None} if no_cache else {}))
    report = exp.run(chosen)
    from ftlens.process_group import context

    if not context().is_main:  # under accelerate / torchrun: rank 0 reports
        return
    console.print(f"[bold green]done[/bold green] in {time.perf_counter() - start:.0f} s")
    for stage, secs in exp.timings.items():
        console.print(f"  {stage:<12} {secs:7.1f} s")
    if report.exists():
        console.print(f"report: [bold]{report.resolve()}[/bold]")


@app.command("demo")
@fail_on_ftlens_error
def demo_cmd(
    part: str = typer.Argument(None, help="'text': the language-transformer demo alone (OUT/text/report.html); "
                               "default: the two vision parts."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Output directory (the page is OUT/report.html)."),
    quick: bool = typer.Option(False, "--quick", help="A tiny variant (seconds): for smoke tests, not for reading."),
    stages: str = typer.Option(None, "--stages", help="Comma-separated subset of stages to run."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the inversion cache."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ... (default: the config's)."),
) -> None:
    """The embedded offline demo, end to end: pretrain, finetune, compare, report.

    Two parts, each with its own page. OUT/report.html: a 12-block ViT pretrained on photo
    patches, finetuned on digits in several ways and compared with its pretrained self.
    OUT/real/report.html: real ImageNet weights (EfficientNet-Lite0) finetuned on real MNIST
    digits (FT, LP, LP-FT, scratch) and compared layer by layer.

    `ftlens demo text`: OUT/text/report.html: a language transformer with real weights
    (all-MiniLM-L6-v2) finetuned on real topic-filed texts (Debian's fortunes) by FT, LP-FT and
    from scratch, compared layer by layer, the paper's findings decided for it.
    """
    from ftlens.experiment import builtin_config
    from ftlens.experiment import quick as make_quick

    if part is not None and part not in DEMO_EXTRA:
        raise ConfigError(f"unknown demo part {part!r}; parts: {', '.join(DEMO_EXTRA)} (or none: the vision demo)")
    for name, where in (DEMO_EXTRA[part],) if part is not None else DEMO_PARTS:
        config = builtin_config(name)
        if quick:
            config = make_quick(config)
        _run(config, out / where if where else out, stages, no_cache, device)


#: The demo's parts: (builtin config, sub-directory of OUT).
DEMO_PARTS = (("demo", ""), ("demo-real", "real"))
#: Parts run on their own by name (``ftlens demo text``).
DEMO_EXTRA = {"text": ("demo-text", "text")}


@app.command("run")
@fail_on_ftlens_error
def run_cmd(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Experiment YAML (e.g. configs/paper/*.yaml)."),
    out: Path = typer.Option(None, "--out", help="Output directory (default runs/<name>)."),
    stages: str = typer.Option(None, "--stages", help="Comma-separated subset of stages to run."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the inversion cache."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ... (default: the config's "
                               "device:)."),
) -> None:
    """Run an experiment config end to end (the same code path as the demo)."""
    from ftlens.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_yaml(config)
    _run(cfg, out or Path("runs") / cfg.name, stages, no_cache, device)


@app.command("report")
@fail_on_ftlens_error
def report_cmd(
    directories: list[Path] = typer.Argument(..., help="Result folders: an experiment (`ftlens run`/`demo`), the --out "
                                             "of `compare`, `cka`, `dynamics` or `finetune`, or a folder of several. "
                                             "Several experiments are shown side by side."),
    out: Path = typer.Option(None, "--out", help="The page to write (default DIR/report.html; for several folders, "
                             "report.html in their common parent)."),
) -> None:
    """Write one self-contained HTML page with every table and figure found in DIRECTORIES."""
    from ftlens.report.build import build_report

    path = build_report(directories[0] if len(directories) == 1 else directories, out=out)
    console.print(f"report: [bold]{path.resolve()}[/bold]")
