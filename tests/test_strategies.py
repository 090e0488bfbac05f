"""The strategy seam: a strategy is one class and one registry line.

A toy strategy defined here (BitFit: only the bias terms train) is registered with one line, runs
end to end through :func:`ftlens.finetune.finetune` on a ViT and a CNN with BatchNorm, and does
what it says: every other parameter is bit-identical after training, every bias changed.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from ftlens.finetune import ConfigError, FinetuneConfig, finetune
from ftlens.finetune.strategies import STRATEGIES, Strategy, get_strategy
from ftlens.models import checkpoint_path, load_model, save_checkpoint


class BitFit(Strategy):
    """Only the bias terms of the backbone and the head train (Ben Zaken et al., 2022)."""

    name = "bitfit"
    aliases = ("bias-only",)
    summary = "train the bias terms alone"

    def check(self, cfg):  # its own option check, called by the configuration's validation
        if cfg.freeze_bn:
            raise ConfigError("bitfit trains the BatchNorm biases; drop freeze_bn")

    def ft_names(self, task_model, cfg, names):
        return [n for n in names if n.endswith(".bias")]


@pytest.fixture
def bitfit():
    STRATEGIES["bitfit"] = BitFit()  # the one registry line
    try:
        yield
    finally:
        del STRATEGIES["bitfit"]


def _start(workdir, spec: str, seed: int, **kwargs):
    """A 'pretrained' checkpoint of ``spec`` drawn from ``seed``: every parameter moved off its
    initialisation (timm zero-initialises the last BN of each residual block, which would leave the
    gradient of the biases before it exactly 0) and the BN statistics off their defaults."""
    torch.manual_seed(seed)
    m = load_model(spec, **kwargs)
    m.module.train()
    with torch.no_grad():
        for p in m.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for _ in range(2):
            m.module(torch.rand(8, *m.input_size))
    m.module.eval()
    return save_checkpoint(m, workdir / f"start-{seed}.safetensors")


@pytest.mark.parametrize("spec,kwargs", [("ftlens:vit-micro", {}), ("timm:resnet10t", {"image_size": 24})])
def test_a_registered_strategy_runs_end_to_end_and_trains_only_what_it_says(tmp_path, bitfit, spec, kwargs):
    start = _start(tmp_path, spec, 5, **kwargs)
    cfg = FinetuneConfig(pretrained_from=str(start), strategy="BIAS_ONLY", data="digits")
    assert cfg.strategy == "bitfit"  # the alias and the name are read from the registry
    with pytest.raises(ConfigError, match="bitfit trains the BatchNorm biases"):
        cfg.replace(freeze_bn=True)
    run = finetune(pretrained_from=str(start), strategy="bitfit", data="digits", data_dir=str(tmp_path / "data"),
                   epochs=2, lr=0.05, batch_size=32, warmup_steps=1, train_size=64, test_size=32, augment=False,
                   out=str(tmp_path / "run"), progress=False)
    assert run.completed and list(run.metrics["phase"]) == ["init", "ft", "ft"]
    parameters = {n for n, _ in run.model.module.named_parameters()}  # with the task head
    before = load_file(str(checkpoint_path(run.run_dir, 0)))
    for epoch in (1, 2):
        after = load_file(str(checkpoint_path(run.run_dir, epoch)))
        assert after.keys() == before.keys()
        changed = {k for k in parameters if not torch.equal(before[k], after[k])}
        biases = {k for k in parameters if k.endswith(".bias")}
        assert biases and changed == biases, sorted(changed ^ biases)
    # the head's bias trained, from the seeded fresh head of epoch 0
    head_bias = [k for k in biases if k.startswith(("head.", "fc."))]
    assert len(head_bias) == 1 and not torch.equal(before[head_bias[0]], after[head_bias[0]])
    assert run.config.strategy == "bitfit"


def test_an_unregistered_strategy_is_an_error_that_lists_the_registry():
    assert "bitfit" not in STRATEGIES
    with pytest.raises(ConfigError, match="unknown strategy 'bitfit'.*surgical"):
        FinetuneConfig(model="ftlens:vit-micro", strategy="bitfit")


def test_every_registered_strategy_is_named_as_registered():
    for name in STRATEGIES:
        strategy = get_strategy(name)
        assert isinstance(strategy, Strategy) and strategy.name == name and strategy.summary
        for alias in strategy.aliases:
            assert get_strategy(alias) is strategy


def test_phase_plans():
    """The phases each built-in strategy plans (closed forms of its options)."""
    cfg = FinetuneConfig(model="ftlens:vit-micro", epochs=3, hp_epochs=2)
    plans = {name: (get_strategy(name).initial_phase(cfg), get_strategy(name).plan_phases(cfg))
             for name in ("scratch", "ft", "lp", "lp-ft", "hp-ft", "l2-sp", "surgical", "wise-ft", "flyp")}
    ft3 = ["ft"] * 3
    assert plans == {"scratch": ("init", ft3), "ft": ("init", ft3), "lp": ("init", ["lp"]), "lp-ft": ("lp", ft3),
                     "hp-ft": ("init", ["hp", "hp", *ft3]), "l2-sp": ("init", ft3), "surgical": ("init", ft3),
                     "wise-ft": ("init", []), "flyp": ("init", ft3)}
    rec = cfg.replace(task="reconstruction")
    assert get_strategy("lp").plan_phases(rec) == ["lp"] * 3  # the decoder is probed by gradient steps
