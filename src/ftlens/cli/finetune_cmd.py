"""``ftlens finetune``: a thin layer over :func:`ftlens.finetune.finetune`.

Options given on the command line override those of ``--config FILE.yaml``; everything not
given takes the defaults of :class:`ftlens.finetune.FinetuneConfig`. Runs unchanged under
``accelerate launch -m ftlens finetune ...`` (DDP; only rank 0 writes and prints).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from ftlens.cli.app import app

_MODEL = "Model and data"
_TASK = "Task and strategy"
_OPT = "Optimisation"
_ROB = "Robustness"
_RUN = "Run"
_MON = "Forgetting monitor"


@app.command("finetune")
def finetune_cmd(
    model: str | None = typer.Option(None, "--model", help="load_model spec: timm:NAME, ftlens:PRESET, clip:hf:DIR, clip:open_clip:ARCH/TAG, a checkpoint, RUN@EPOCH.", rich_help_panel=_MODEL),
    pretrained: bool | None = typer.Option(None, "--pretrained/--no-pretrained", help="timm: models: fetch the hub weights (default on).", rich_help_panel=_MODEL),
    pretrained_from: str | None = typer.Option(None, "--pretrained-from", help="Start from RUN@last, RUN@3 or a checkpoint file (its head is replaced).", rich_help_panel=_MODEL),
    image_size: str | None = typer.Option(None, "--image-size", help="Input resolution H or H,W (default: the model's own, or its checkpoint's).", rich_help_panel=_MODEL),
    max_length: int | None = typer.Option(None, "--max-length", help="Text models: tokens per text, padded or truncated (default: the model's own).", rich_help_panel=_MODEL),
    data: str | None = typer.Option(None, "--data", help="Dataset: digits, mnist-5k, natural-patches, fashion-mnist, cifar10, cifar100, pets, eurosat, folder:PATH; texts: fortunes-topics, fortunes:TOPIC,..., csv:PATH, textfolder:PATH, hf-text:NAME.", rich_help_panel=_MODEL),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Where torchvision datasets live (default $FTLENS_DATA_DIR or ~/.cache/ftlens/data).", rich_help_panel=_MODEL),
    download: bool | None = typer.Option(None, "--download/--no-download", help="Download missing datasets (default: when online).", rich_help_panel=_MODEL),
    train_size: int | None = typer.Option(None, "--train-size", help="Use a seeded subset of this many training images.", rich_help_panel=_MODEL),
    test_size: int | None = typer.Option(None, "--test-size", help="Use a seeded subset of this many test images.", rich_help_panel=_MODEL),
    task: str | None = typer.Option(None, "--task", help="classification | reconstruction.", rich_help_panel=_TASK),
    strategy: str | None = typer.Option(None, "--strategy", help="A registered finetuning strategy (ftlens.finetune.strategies.STRATEGIES: ft by default, scratch, lp, lp-ft, ...; an unknown name lists them all).", rich_help_panel=_TASK),
    head_init: str | None = typer.Option(None, "--head-init", help="random (default) | zero-shot (clip: models: the head from class-prompt text embeddings).", rich_help_panel=_TASK),
    prompts: list[str] | None = typer.Option(None, "--prompt", help="Class-prompt template, repeatable, {} = class name (default 'a photo of a {}.').", rich_help_panel=_TASK),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs of finetuning (hp-ft adds --hp-epochs before them).", rich_help_panel=_TASK),
    hp_epochs: int | None = typer.Option(None, "--hp-epochs", help="hp-ft: epochs of head probing before FT.", rich_help_panel=_TASK),
    hp_lr: float | None = typer.Option(None, "--hp-lr", help="hp-ft: learning rate of head probing (default --lr).", rich_help_panel=_TASK),
    hp_label_smoothing: float | None = typer.Option(None, "--hp-label-smoothing", help="hp-ft: label smoothing during head probing.", rich_help_panel=_TASK),
    l2sp_weight: float | None = typer.Option(None, "--l2sp-weight", help="l2-sp: weight w of w*sum||theta-theta_0||^2 (default 0.01).", rich_help_panel=_TASK),
    surgical_blocks: str | None = typer.Option(None, "--surgical-blocks", help="surgical: blocks that train, e.g. 0-3 or 0,2,5-6.", rich_help_panel=_TASK),
    surgical_layers: str | None = typer.Option(None, "--surgical-layers", help="surgical: module-name patterns that train, any model, e.g. 'layer1,layer2' or 'stages.0*'.", rich_help_panel=_TASK),
    freeze_bn: bool | None = typer.Option(None, "--freeze-bn/--train-bn", help="FT: keep BatchNorm statistics and affine weights fixed (default: BN trains).", rich_help_panel=_TASK),
    wise_alphas: str | None = typer.Option(None, "--wise-alphas", help="wise-ft: interpolation weights, e.g. 0,0.5,1.", rich_help_panel=_TASK),
    wise_from: str | None = typer.Option(None, "--wise-from", help="wise-ft: theta_0 (default: epoch 0 of --wise-to's run).", rich_help_panel=_TASK),
    wise_to: str | None = typer.Option(None, "--wise-to", help="wise-ft: the finetuned endpoint, e.g. RUN@last.", rich_help_panel=_TASK),
    optimizer: str | None = typer.Option(None, "--optimizer", help="sgd (default; adamw for text data) | adam | adamw.", rich_help_panel=_OPT),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3; lp-ft 1e-4, as in the literature).", rich_help_panel=_OPT),
    momentum: float | None = typer.Option(None, "--momentum", help="SGD momentum (default 0.9).", rich_help_panel=_OPT),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay (default 1e-4).", rich_help_panel=_OPT),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Linear warm-up steps (default 100, capped at a tenth of a phase).", rich_help_panel=_OPT),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help="Max gradient norm (default 1.0; 0 turns it off).", rich_help_panel=_OPT),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing", help="Label smoothing during FT.", rich_help_panel=_OPT),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size (default 128).", rich_help_panel=_OPT),
    augment: bool | None = typer.Option(None, "--augment/--no-augment", help="Random crop with padding + horizontal flip (default on).", rich_help_panel=_OPT),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Random horizontal flip when augmenting (default: on, off for digits).", rich_help_panel=_OPT),
    seed: int | None = typer.Option(None, "--seed", help="Seed of everything random in the run (default 0).", rich_help_panel=_OPT),
    corruptions: str | None = typer.Option(None, "--corruptions", help="Accuracy under these corruptions per epoch, e.g. gaussian_noise,contrast.", rich_help_panel=_ROB),
    severities: str | None = typer.Option(None, "--severities", help="Severities 1..5 (default all), e.g. 1,3,5.", rich_help_panel=_ROB),
    corruption_size: int | None = typer.Option(None, "--corruption-size", help="Test images per severity (default 1000).", rich_help_panel=_ROB),
    corruption_dir: str | None = typer.Option(None, "--corruption-dir", help="Directory of official <corruption>.npy files (CIFAR-10-C layout).", rich_help_panel=_ROB),
    config: Path | None = typer.Option(None, "--config", help="YAML file of options (command-line options win).", rich_help_panel=_RUN),
    out: str | None = typer.Option(None, "--out", help="Run directory (default runs/DATA-TASK-STRATEGY-sSEED).", rich_help_panel=_RUN),
    device: str | None = typer.Option(None, "--device", help="Where to train: auto (a CUDA GPU when there is one, else the CPU; the default), cpu, cuda.", rich_help_panel=_RUN),
    num_workers: int | None = typer.Option(None, "--num-workers", help="DataLoader workers for datasets read from disk.", rich_help_panel=_RUN),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a killed run in --out from its last complete epoch.", rich_help_panel=_RUN),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out first.", rich_help_panel=_RUN),
    stop_after: int | None = typer.Option(None, "--stop-after", help="Stop after this epoch (resumable later).", rich_help_panel=_RUN),
    tensorboard: bool | None = typer.Option(None, "--tensorboard/--no-tensorboard", help="Write TensorBoard curves to OUT/tensorboard (needs tensorboard: pip install 'ftlens[tracking]').", rich_help_panel=_RUN),
    wandb: str | None = typer.Option(None, "--wandb", help="Log each epoch to this Weights & Biases project (needs wandb).", rich_help_panel=_RUN),
    monitor_forgetting: bool | None = typer.Option(None, "--monitor-forgetting/--no-monitor-forgetting", help="After every epoch: learning and forgetting per layer against epoch 0 on a few test images, and the signal forgetting_spread (std of forgetting over layers 2..L), beside accuracy (metrics.csv, monitor.csv, TensorBoard / W&B).", rich_help_panel=_MON),
    monitor_images: int | None = typer.Option(None, "--monitor-images", help="Test images of the monitor (default 32).", rich_help_panel=_MON),
    monitor_steps: int | None = typer.Option(None, "--monitor-steps", help="Inversion steps of the monitor (default 50, at most: the default schedule stops converged images early).", rich_help_panel=_MON),
    monitor_keep: bool | None = typer.Option(None, "--monitor-keep/--no-monitor-keep", help="Keep the checkpoint of the epoch the signal prefers (its largest value) as OUT/preferred.safetensors.", rich_help_panel=_MON),
) -> None:
    """Finetune a model (classification or reconstruction) with a chosen strategy; one checkpoint per epoch.

    Example: ftlens finetune --model ftlens:vit-tiny-32 --data digits --strategy lp-ft --epochs 5 --out runs/digits-lpft
    """
    options = dict(locals())
    from ftlens.finetune import FinetuneConfig, finetune
    from ftlens.finetune.config import read_yaml_mapping

    fields = set(FinetuneConfig.field_names())
    given = {k: v for k, v in options.items() if k in fields and v is not None and v != []}
    try:
        base: dict[str, Any] = read_yaml_mapping(config) if config is not None else {}
        cfg = FinetuneConfig.coerce(base, **given)
        result = finetune(cfg, resume=resume, overwrite=overwrite, stop_after=stop_after)
    except Exception as exc:
        from ftlens.cli.common import error_line, is_user_error

        if not is_user_error(exc):
            raise
        typer.secho(error_line(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if _is_main_process():
        print_summary(result)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def print_summary(result) -> None:
    """A rich table of the run's metrics (at most 12 epochs shown) and where things are."""
    from rich.table import Table

    from ftlens.cli.common import make_console

    df = result.metrics
    cols = [c for c in ("epoch", "phase", "alpha", "lr", "train_loss", "train_acc", "penalty", "test_loss", "test_acc",
                        "test_l1", "test_psnr", "corrupted_acc_mean", "corrupted_l1_mean", "monitor_forgetting_spread")
            if c in df.columns]
    table = Table(title=f"{result.config.strategy} · {result.config.task} · {result.config.data}", show_lines=False)
    for c in cols:
        table.add_column(c, justify="left" if c == "phase" else "right")
    rows = list(range(len(df)))
    if len(rows) > 12:
        rows = rows[:3] + [-1] + rows[-8:]
    for i in rows:
        if i == -1:
            table.add_row(*["…"] * len(cols))
            continue
        r = df.iloc[i]
        table.add_row(*[_fmt(c, r[c]) for c in cols])
    console = make_console()
    console.print(table)
    lines = [f"run directory: {result.run_dir}  (epochs are specs: {result.run_dir}@0 ... @last)"]
    if result.energy:
        e = result.energy
        acc = f"train acc {e['train_acc']:.3f}, " if "train_acc" in e else ""
        lines.append(f"energy at the start of FT (epoch {e['epoch']}): {acc}train loss {e['train_loss']:.4f}")
    if result.linear_probe:
        lines.append(f"linear probe: C = {result.linear_probe['C']:.0e}, validation acc {result.linear_probe['val_acc']:.3f}")
    if result.monitor and result.monitor.get("preferred_epoch") is not None:
        m = result.monitor
        kept = f", kept as {result.run_dir}/preferred.safetensors" if m.get("kept_epoch") is not None else ""
        lines.append(f"forgetting monitor: forgetting_spread prefers epoch {m['preferred_epoch']} "
                     f"({result.run_dir}@{m['preferred_epoch']}{kept}); per layer in {result.run_dir}/monitor.csv")
    if not result.completed:
        lines.append(f"stopped after epoch {result.last_epoch}; run the same command again to continue")
    for line in lines:
        console.print(line)


def _fmt(col: str, v) -> str:
    if isinstance(v, str):
        return v
    if v != v:  # NaN
        return "-"
    if col == "epoch":
        return str(int(v))
    if col in ("lr", "penalty"):
        return f"{v:.2e}"
    if col == "test_psnr":
        return f"{v:.2f}"
    return f"{v:.4f}"
