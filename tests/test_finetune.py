"""Finetuning engine: strategies, resumption, learning on the embedded data, errors.

Everything runs ``ftlens:vit-micro`` (16 px, 4 blocks) on small subsets of ``digits`` on the CPU.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ftlens.errors import CheckpointError, DatasetError
from ftlens.finetune import ConfigError, FinetuneConfig, finetune
from ftlens.finetune.config import DEFAULT_LP_GRID
from ftlens.finetune.strategies.l2_sp import l2sp_penalty, l2sp_reference
from ftlens.finetune.tasks import PatchDecoder, TaskModel, reset_classifier
from ftlens.models import checkpoint_path, load_model, save_checkpoint

MODEL = "ftlens:vit-micro"
HEAD = ("head.weight", "head.bias")



@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def pretrained(workdir):
    """A 'pretrained' checkpoint: vit-micro drawn with seed 123 (no head)."""
    torch.manual_seed(123)
    return save_checkpoint(load_model(MODEL), workdir / "pretrained.safetensors")


@pytest.fixture(scope="module")
def small(workdir, pretrained):
    """Common options: a small subset of digits, a short warm-up, no progress bars."""
    return dict(pretrained_from=str(pretrained), data="digits", data_dir=str(workdir / "data"), batch_size=64,
                warmup_steps=2, train_size=256, test_size=128, progress=False)


def backbone(path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k not in HEAD and not k.startswith("task_head.")}


# --------------------------------------------------------------------------- strategies


def test_lp_leaves_backbone_bit_identical(workdir, pretrained, small):
    run = finetune(strategy="lp", out=str(workdir / "lp"), **small)
    start = backbone(pretrained)
    for epoch in (0, 1):
        weights = backbone(checkpoint_path(run.run_dir, epoch))
        assert weights.keys() == start.keys()
        for k, v in start.items():
            assert torch.equal(weights[k], v), f"epoch {epoch}: backbone parameter {k} changed"
    head0 = load_file(str(checkpoint_path(run.run_dir, 0)))["head.weight"]
    head1 = load_file(str(checkpoint_path(run.run_dir, 1)))["head.weight"]
    assert head1.shape == (10, 32) and not torch.equal(head0, head1)
    assert list(run.metrics["phase"]) == ["init", "lp"]
    assert run.linear_probe["C"] in DEFAULT_LP_GRID
    assert run.metrics["test_acc"].iloc[1] > run.metrics["test_acc"].iloc[0]


def test_surgical_changes_only_chosen_blocks(workdir, small):
    run = finetune(strategy="surgical", surgical_blocks="1-2", epochs=1, lr=0.05, out=str(workdir / "surg"), **small)
    before = load_file(str(checkpoint_path(run.run_dir, 0)))
    after = load_file(str(checkpoint_path(run.run_dir, 1)))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = lambda k: k.startswith(("blocks.1.", "blocks.2.", "head."))  # noqa: E731
    assert changed, "nothing trained"
    assert all(allowed(k) for k in changed), f"frozen parameters changed: {sorted(k for k in changed if not allowed(k))}"
    assert any(k.startswith("blocks.1.") for k in changed) and any(k.startswith("blocks.2.") for k in changed)
    assert "head.weight" in changed


def test_l2sp_penalty_zero_at_start_positive_after_a_step():
    torch.manual_seed(0)
    wrapper = load_model(MODEL)
    reset_classifier(wrapper, 10)
    model = TaskModel(wrapper, "classification")
    model.backbone.requires_grad_(True)
    reference = l2sp_reference(model)
    assert all(not n.startswith("backbone.head.") for n in reference), "the head must not be in L2-SP"
    assert l2sp_penalty(model, reference).item() == 0.0
    with torch.no_grad():  # the head is excluded: changing it keeps the penalty at 0
        model.backbone.head.weight.add_(1.0)
    assert l2sp_penalty(model, reference).item() == 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert l2sp_penalty(model, reference).item() > 0.0


def test_l2sp_run_records_penalty(workdir, small):
    run = finetune(strategy="l2-sp", l2sp_weight=0.1, epochs=1, lr=0.05, out=str(workdir / "l2sp"), **small)
    assert run.metrics["penalty"].iloc[-1] > 0


def test_wise_ft_endpoints_exact(workdir, small):
    src = finetune(strategy="lp-ft", epochs=1, lr=0.01, out=str(workdir / "lpft"), **small)
    assert src.energy is not None and src.energy["epoch"] == 0
    assert src.metrics["energy_train_acc"].iloc[0] == pytest.approx(src.energy["train_acc"])
    opts = {k: v for k, v in small.items() if k != "pretrained_from"}
    wise = finetune(strategy="wise-ft", wise_to=f"{src.run_dir}@last", wise_alphas="0,0.5,1",
                    out=str(workdir / "wise"), **opts)
    assert wise.config.wise_from == f"{src.run_dir}@0"
    for epoch, endpoint in ((0, 0), (2, 1)):
        got = load_file(str(checkpoint_path(wise.run_dir, epoch)))
        want = load_file(str(checkpoint_path(src.run_dir, endpoint)))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    m, s = wise.metrics, src.metrics
    assert list(m["alpha"]) == [0.0, 0.5, 1.0]
    assert m["test_acc"].iloc[0] == s["test_acc"].iloc[0] and m["test_acc"].iloc[2] == s["test_acc"].iloc[-1]
    mid = load_file(str(checkpoint_path(wise.run_dir, 1)))
    k = "blocks.0.attn.qkv.weight"
    want = 0.5 * load_file(str(checkpoint_path(src.run_dir, 0)))[k].double() + \
        0.5 * load_file(str(checkpoint_path(src.run_dir, 1)))[k].double()
    torch.testing.assert_close(mid[k].double(), want, rtol=0, atol=1e-7)


def test_scratch_ignores_pretrained_weights(workdir, pretrained, small):
    run = finetune(strategy="scratch", epochs=1, seed=5, out=str(workdir / "scratch"), **small)
    start = backbone(checkpoint_path(run.run_dir, 0))
    source = backbone(pretrained)
    assert not any(torch.equal(start[k], source[k]) for k in source if k.endswith("weight") and "norm" not in k)
    torch.manual_seed(5)
    fresh = load_model(MODEL).module.state_dict()
    assert all(torch.equal(start[k], fresh[k]) for k in fresh)


# --------------------------------------------------------------------------- resumption


def test_resume_equals_uninterrupted(workdir, small):
    opts = dict(small, strategy="hp-ft", hp_epochs=1, epochs=3, lr=0.02, hp_lr=0.05, augment=True)
    full = finetune(out=str(workdir / "full"), **opts)
    assert full.completed and full.last_epoch == 4
    for stop in (1, 2):  # 1: the state holds the head-probing optimiser; 2: mid-FT (momentum buffers)
        out = workdir / f"resumed{stop}"
        part = finetune(out=str(out), stop_after=stop, **opts)
        assert not part.completed and part.last_epoch == stop
        # what a kill during epoch stop+1 leaves behind: a stray checkpoint without state, temporary files
        (out / "checkpoints" / f"epoch_{stop + 1:03d}.safetensors").write_bytes(b"garbage")
        (out / "checkpoints" / f".epoch_{stop + 1:03d}.safetensors.x.tmp").write_bytes(b"half")
        done = finetune(out=str(out), **opts)
        assert done.completed and done.last_epoch == 4
        for epoch in range(5):
            a = load_file(str(checkpoint_path(full.run_dir, epoch)))
            b = load_file(str(checkpoint_path(done.run_dir, epoch)))
            assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} differs after resuming at {stop}"
        pd.testing.assert_frame_equal(pd.read_csv(full.run_dir / "metrics.csv"), pd.read_csv(out / "metrics.csv"))
        assert done.energy == full.energy
        assert not list((out / "checkpoints").glob(".*.tmp"))


def test_changed_config_in_same_dir_is_an_error(workdir, small):
    finetune(strategy="ft", epochs=1, out=str(workdir / "cfgchange"), **small)
    with pytest.raises(ConfigError, match="another configuration.*lr"):
        finetune(strategy="ft", epochs=1, lr=0.5, out=str(workdir / "cfgchange"), **small)


# --------------------------------------------------------------------------- learning


def test_ft_beats_chance_on_digits(workdir, small):
    opts = dict(small, train_size=None, test_size=300)
    run = finetune(strategy="ft", epochs=5, optimizer="adamw", lr=3e-3, augment=False, out=str(workdir / "learn"), **opts)
    acc = run.metrics["test_acc"]
    assert acc.iloc[-1] > 0.5, f"10 classes, chance 0.1; got {list(acc)}"
    assert run.metrics["train_loss"].iloc[-1] < run.metrics["train_loss"].iloc[1]


def test_reconstruction_loss_falls(workdir, small):
    run = finetune(task="reconstruction", strategy="ft", epochs=3, optimizer="adamw", lr=3e-3,
                   corruptions="contrast", severities="5", corruption_size=40, out=str(workdir / "recon"), **small)
    l1 = run.metrics["test_l1"]
    assert list(run.metrics["l1_contrast_s5"]) == list(run.metrics["corrupted_l1_mean"])
    assert l1.iloc[-1] < 0.7 * l1.iloc[0], list(l1)
    assert run.metrics["test_psnr"].iloc[-1] > run.metrics["test_psnr"].iloc[0]
    extras = [k for k in load_file(str(checkpoint_path(run.run_dir, 3))) if k.startswith("task_head.")]
    assert sorted(extras) == ["task_head.proj.bias", "task_head.proj.weight"]
    assert set(run.model.extra_state) == set(extras)  # the run's epochs load as models, decoder kept aside


def test_corruption_columns(workdir, small):
    run = finetune(strategy="ft", epochs=1, corruptions="gaussian_noise,contrast", severities="1,5",
                   corruption_size=40, out=str(workdir / "corr"), **small)
    cols = ["acc_gaussian_noise_s1", "acc_gaussian_noise_s5", "acc_contrast_s1", "acc_contrast_s5"]
    assert all(c in run.metrics for c in cols)
    mean = run.metrics[cols].mean(axis=1)
    torch.testing.assert_close(torch.tensor(run.metrics["corrupted_acc_mean"].values), torch.tensor(mean.values))


# --------------------------------------------------------------------------- units and errors


@pytest.mark.parametrize("grid,patch", [((4, 4), (4, 4)), ((2, 3), (4, 2)), ((7, 7), (2, 2))])
def test_patch_decoder_shapes_and_order(grid, patch):
    d = 8
    dec = PatchDecoder(d, grid, patch, num_prefix_tokens=1)
    tokens = torch.randn(2, 1 + grid[0] * grid[1], d)
    out = dec(tokens)
    assert out.shape == (2, 3, grid[0] * patch[0], grid[1] * patch[1])
    # pixel (c, h*ph+i, w*pw+j) comes from channel c*ph*pw + i*pw + j of patch (h, w)
    proj = dec.proj(tokens[:, 1:].transpose(1, 2).reshape(2, d, *grid))
    c, h, w, i, j = 2, grid[0] - 1, grid[1] - 1, patch[0] - 1, 0
    assert torch.equal(out[:, c, h * patch[0] + i, w * patch[1] + j], proj[:, c * patch[0] * patch[1] + i * patch[1] + j, h, w])


def test_unknown_strategy_task_optimizer():
    with pytest.raises(ConfigError, match="unknown strategy 'lpft2'.*lp-ft"):
        FinetuneConfig(model=MODEL, strategy="lpft2")
    with pytest.raises(ConfigError, match="unknown task 'segmentation'"):
        FinetuneConfig(model=MODEL, task="segmentation")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        FinetuneConfig(model=MODEL, optimizer="lion")
    with pytest.raises(ConfigError, match="unknown finetuning option 'epoch'.*epochs"):
        FinetuneConfig.from_dict({"model": MODEL, "epoch": 3})
    with pytest.raises(ConfigError, match="surgical_blocks"):
        FinetuneConfig(model=MODEL, strategy="surgical")


def test_config_yaml_round_trip(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text("finetune:\n  model: ftlens:vit-micro\n  strategy: HP_FT\n  hp-epochs: 2\n  surgical_blocks: 0-2\n")
    cfg = FinetuneConfig.from_yaml(path)
    assert cfg.strategy == "hp-ft" and cfg.hp_epochs == 2 and cfg.surgical_blocks == [0, 1, 2]
    (tmp_path / "back.yaml").write_text(cfg.to_yaml())
    assert FinetuneConfig.from_yaml(tmp_path / "back.yaml") == cfg


def test_truncated_checkpoint_is_a_clear_error(workdir, pretrained, small):
    bad = workdir / "truncated.safetensors"
    data = pretrained.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    opts = dict(small, pretrained_from=str(bad))
    with pytest.raises(CheckpointError, match="truncated"):
        finetune(strategy="ft", epochs=1, out=str(workdir / "bad"), **opts)


def test_missing_dataset_offline(workdir, small):
    opts = dict(small, data="cifar10", data_dir=str(workdir / "empty"), download=False)
    with pytest.raises(DatasetError, match=r"cifar10.*--data-dir"):
        finetune(strategy="ft", epochs=1, out=str(workdir / "nodata"), **opts)


def test_cli_runs_and_rejects_unknown_strategy(workdir, pretrained):
    from typer.testing import CliRunner

    from ftlens.cli import app

    runner = CliRunner()
    out = workdir / "cli"
    result = runner.invoke(app, ["finetune", "--pretrained-from", str(pretrained), "--data", "digits", "--strategy", "ft",
                                 "--epochs", "1", "--train-size", "128", "--test-size", "64", "--warmup-steps", "1",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "test_acc" in result.output and (out / "checkpoints" / "epoch_001.safetensors").exists()
    assert FinetuneConfig.from_yaml(out / "config.yaml").epochs == 1
    result = runner.invoke(app, ["finetune", "--model", MODEL, "--strategy", "lpft2", "--out", str(workdir / "x")])
    assert result.exit_code == 2 and "lp-ft" in result.output


def test_lpft_probe_features_include_the_training_augmentation(make_vit, make_pool):
    """LP-FT fits its head on the features FT trains on: an augmented view of each image."""
    from ftlens.finetune.evaluation import source_features as _features
    from ftlens.finetune.loop import DataSource, augment_batch
    from ftlens.models import PRE_LOGITS

    m = make_vit(0)
    x = make_pool(10, 5)
    y = torch.arange(10) % 3
    src = DataSource.from_tensors(x, y, num_classes=3)
    plain, labels = _features(m, src, 4, torch.device("cpu"))
    assert plain.shape[0] == 10 and torch.equal(labels, y)
    torch.testing.assert_close(plain, m.representations(x, [PRE_LOGITS])[PRE_LOGITS])
    seen, labels2 = _features(m, src, 4, torch.device("cpu"), augment=(2, True), seed=3)
    assert seen.shape[0] == 10 and torch.equal(labels2, y)
    gen = torch.Generator().manual_seed(3)
    views = torch.cat([augment_batch(x[lo:lo + 4], gen, 2, True) for lo in range(0, 10, 4)])
    torch.testing.assert_close(seen, m.representations(views, [PRE_LOGITS])[PRE_LOGITS])
    assert not torch.allclose(seen, plain)


def test_lpft_default_lr_is_a_tenth_of_ft(workdir, small):
    """LP-FT's learning rate defaults to a tenth of FT's (the literature's ratio); a given lr is kept."""
    from ftlens.finetune.config import DEFAULT_LR, default_lr

    assert default_lr("ft") == DEFAULT_LR == 1e-3 and default_lr("lp-ft") == pytest.approx(1e-4)
    assert FinetuneConfig(model=MODEL, strategy="lp-ft").lr is None  # resolved when the run starts
    assert FinetuneConfig(model=MODEL, strategy="lp-ft", lr=0.02).lr == 0.02
    with pytest.raises(ConfigError, match="lr must be > 0"):
        FinetuneConfig(model=MODEL, lr=0)
    opts = dict(small, train_size=64, test_size=32)
    run = finetune(strategy="lp-ft", epochs=1, out=str(workdir / "lpft-lr"), **opts)
    assert run.config.lr == pytest.approx(1e-4)
    assert FinetuneConfig.from_yaml(run.run_dir / "config.yaml").lr == pytest.approx(1e-4)
    assert finetune(strategy="lp-ft", epochs=1, out=str(workdir / "lpft-lr"), **opts).completed  # resumes


def test_lpft_first_ft_epoch_keeps_what_the_probe_learned(workdir):
    """The collapse of issue 9: at FT's lr (1e-3) the probe's large weights turn the first backbone
    steps into large logit changes and FT's first epoch undoes the probe (here train loss 2.02 ->
    2.27, test accuracy 0.32 -> 0.23). With LP-FT's default lr FT starts where LP ended."""
    run = finetune(model="ftlens:vit-micro", data="digits", data_dir=str(workdir / "data"), strategy="lp-ft",
                   epochs=1, train_size=300, test_size=150, batch_size=16, progress=False,
                   out=str(workdir / "lpft-collapse"))
    lp, ft = run.metrics.iloc[0], run.metrics.iloc[1]
    assert (lp["phase"], ft["phase"]) == ("lp", "ft")
    assert ft["train_loss"] <= lp["train_loss"] + 0.1
    assert ft["test_acc"] >= lp["test_acc"] - 0.08
