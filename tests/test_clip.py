"""Image-text models: zero-shot heads and the FLYP strategy, on tiny random CLIPs built offline.

Hugging Face: a ``CLIPConfig`` with small vision/text configs saved to a temp dir, with a
word-level tokenizer built from a small vocabulary (saved beside it, so ``AutoTokenizer`` loads it
as it would a real model's). open_clip: a tiny architecture registered from a JSON config; its
tokenizer is open_clip's own BPE tokenizer, which ships inside the package.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ftlens import clip
from ftlens.errors import FtlensError, MissingDependencyError, RandomWeightsWarning
from ftlens.finetune import ConfigError, FinetuneConfig, finetune
from ftlens.finetune.strategies.flyp import contrastive_loss
from ftlens.invariance import compare
from ftlens.models import load_model

transformers = pytest.importorskip("transformers")

WORDS = ["a", "photo", "of", "the", ".", "an", "image", "cat", "dog", "bird"]
TEMPLATES = ["a photo of a {}.", "an image of the {}."]
CLASSES = ["cat", "dog", "bird"]


def save_tiny_hf_clip(path, seed: int = 0):
    """A random HF CLIPModel (3 vision layers of width 32 at 32 px, 2 text layers) and a word-level
    tokenizer, both written to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, "<eos>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 1), ("<eos>", 3)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=3, num_attention_heads=2),
        projection_dim=16,
    )
    transformers.CLIPModel(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("hfclip"))


@pytest.fixture(scope="module")
def open_clip_spec(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    cfg = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=16,
                                             mlp_ratio=2.0),
               text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
    path = tmp_path_factory.mktemp("openclip") / "ftlens-test-tiny-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "clip:open_clip:ftlens-test-tiny-clip"


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """``folder:`` dataset: cat = reddish, dog = bluish noisy 32 px images (linearly separable)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 16)):
        for c, name in enumerate(["cat", "dog"]):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.uniform(0, 0.5, size=(32, 32, 3))
                img[..., 0 if c == 0 else 2] += 0.5
                Image.fromarray((img * 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
    return f"folder:{root}"


# --------------------------------------------------------------------------- zero-shot head


def _slow_logits_hf(hf_dir, images, mean, std):
    """Zero-shot logits by the obvious loops, in float64, from a fresh CLIPModel and tokenizer."""
    model = transformers.CLIPModel.from_pretrained(hf_dir).double().eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    with torch.no_grad():
        rows = []
        for c in CLASSES:
            per_template = []
            for t in TEMPLATES:
                ids = tok([t.format(c)], return_tensors="pt")["input_ids"]
                e = model.text_projection(model.text_model(input_ids=ids).pooler_output)[0]
                per_template.append(e / e.norm())
            m = torch.stack(per_template).mean(0)
            rows.append(m / m.norm())
        x = (images.double() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        z = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        scale = model.logit_scale.exp()
        return torch.stack([torch.stack([scale * (r @ (zi / zi.norm())) for r in rows]) for zi in z])


def test_zero_shot_head_hf_equals_slow_computation(hf_dir):
    wrapper = load_model(f"clip:hf:{hf_dir}")
    assert wrapper.layers == [f"vision_model.encoder.layers.{i}" for i in range(3)]
    clip.zero_shot_head(wrapper, CLASSES, TEMPLATES)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = wrapper.module(wrapper._normalize(images)).double()
    slow = _slow_logits_hf(hf_dir, images, wrapper.mean, wrapper.std)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert float(wrapper.module.head.bias.detach().abs().max()) == 0.0
    # the pre_logits layer is the unit image embedding the head reads
    pre = wrapper.representations(images, ["pre_logits"])["pre_logits"]
    torch.testing.assert_close(pre.norm(dim=1), torch.ones(5))


def test_zero_shot_head_open_clip_equals_slow_computation(open_clip_spec):
    torch.manual_seed(0)
    wrapper = load_model(open_clip_spec)
    assert wrapper.layers == ["visual.transformer.resblocks.0", "visual.transformer.resblocks.1"]
    pair = clip.image_text_of(wrapper)  # the text tower used for the head (open_clip's own tokenizer)
    clip.zero_shot_head(wrapper, CLASSES, TEMPLATES)
    import open_clip

    tok = open_clip.get_tokenizer("ftlens-test-tiny-clip")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = wrapper.module(wrapper._normalize(images))
        text_model = pair.text.clip
        rows = []
        for c in CLASSES:
            es = [text_model.encode_text(tok([t.format(c)]))[0] for t in TEMPLATES]
            m = torch.stack([e / e.norm() for e in es]).mean(0)
            rows.append(m / m.norm())
        z = wrapper.module.visual(wrapper._normalize(images))
        slow = torch.stack([torch.stack([text_model.logit_scale.exp() * (r @ (zi / zi.norm())) for r in rows])
                            for zi in z])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_image_tower_checkpoint_round_trip_without_the_original_dir(hf_dir, tmp_path):
    import shutil

    from ftlens.models import save_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(hf_dir, copy)
    wrapper = load_model(f"clip:hf:{copy}")
    clip.zero_shot_head(wrapper, CLASSES, TEMPLATES)
    path = save_checkpoint(wrapper, tmp_path / "zs.safetensors")
    shutil.rmtree(copy)  # the checkpoint records the model config: the architecture rebuilds alone
    again = load_model(path)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.module(again._normalize(images)), wrapper.module(wrapper._normalize(images)),
                                   rtol=0, atol=0)
    assert again.fingerprint == wrapper.fingerprint


def test_hf_clip_at_another_image_size_round_trips(hf_dir, tmp_path):
    from ftlens.models import save_checkpoint

    wrapper = load_model(f"clip:hf:{hf_dir}", image_size=48)
    assert wrapper.input_size == (3, 48, 48)
    clip.zero_shot_head(wrapper, CLASSES, TEMPLATES)
    again = load_model(save_checkpoint(wrapper, tmp_path / "48.safetensors"))
    assert again.input_size == (3, 48, 48)
    images = torch.rand(2, 3, 48, 48)
    torch.testing.assert_close(again.representations(images, again.layers + ["pre_logits"]),
                               wrapper.representations(images, wrapper.layers + ["pre_logits"]), rtol=0, atol=0)
    # at the config's own size the resampling is the identity: the same as the model without it
    native = load_model(f"clip:hf:{hf_dir}")
    ref = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref.visual_projection(ref.vision_model(pixel_values=native._normalize(x)).pooler_output)
        torch.testing.assert_close(native.module.forward_features(native._normalize(x)), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- the FLYP loss


def _clip_loss_loops(image, text, scale):
    """CLIP's symmetric loss by loops (one text per image, float64)."""
    n = image.shape[0]
    s = [[scale * float(image[i] @ text[j]) for j in range(n)] for i in range(n)]
    i2t = sum(-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def test_flyp_loss_equals_clip_loss_by_hand_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    targets = torch.arange(6)
    ours = contrastive_loss(image, text, targets, 7.0)
    assert abs(float(ours) - _clip_loss_loops(image, text, 7.0)) < 1e-6
    # symmetric: the roles of images and texts swap without changing the loss
    assert abs(float(ours) - float(contrastive_loss(text, image, targets, 7.0))) < 1e-6
    # the same as open_clip's own ClipLoss
    open_clip = pytest.importorskip("open_clip")
    ref = open_clip.loss.ClipLoss()(image.float(), text.float(), torch.tensor(7.0))
    assert abs(float(ours) - float(ref)) < 1e-5
    # a permutation of the batch does not change it
    perm = torch.randperm(6, generator=g)
    assert abs(float(ours) - float(contrastive_loss(image[perm], text, targets[perm], 7.0))) < 1e-6


def test_flyp_loss_with_repeated_classes_by_hand():
    g = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    text = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1)
    targets = torch.tensor([0, 2, 0, 1, 2])
    scale = 3.0
    s = [[scale * float(image[i] @ text[c]) for c in range(3)] for i in range(5)]
    i2t = sum(-s[i][int(targets[i])] + math.log(sum(math.exp(v) for v in s[i])) for i in range(5)) / 5
    t2i = 0.0
    for c in range(3):
        lse = math.log(sum(math.exp(s[i][c]) for i in range(5)))
        members = [i for i in range(5) if int(targets[i]) == c]
        t2i += sum(-(s[i][c] - lse) for i in members) / len(members)
    t2i /= 3
    assert abs(float(contrastive_loss(image, text, targets, scale)) - 0.5 * (i2t + t2i)) < 1e-9


# --------------------------------------------------------------------------- FLYP runs


@pytest.fixture(scope="module")
def flyp_run(hf_dir, colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "flyp"
    return finetune(model=f"clip:hf:{hf_dir}", data=colours, strategy="flyp", epochs=3, optimizer="adamw", lr=1e-4,
                    batch_size=16, augment=False, prompts=TEMPLATES, device="cpu", out=str(out), progress=False)


def test_flyp_lowers_the_loss_and_learns(flyp_run):
    m = flyp_run.metrics
    assert list(m["phase"]) == ["init", "ft", "ft", "ft"]
    loss = m["train_loss"].to_numpy()
    assert loss[3] < loss[1] - 0.3, loss  # chance is (ln 2 + ln 16) / 2 = 1.73, the floor (0 + ln 8) / 2 = 1.04
    assert float(m["test_acc"].iloc[-1]) >= 0.9, m["test_acc"].tolist()


def test_flyp_epoch_zero_is_the_zero_shot_classifier(flyp_run, hf_dir):
    start = load_model(f"{flyp_run.run_dir}@0")
    reference = load_model(f"clip:hf:{hf_dir}")
    clip.zero_shot_head(reference, ["cat", "dog"], TEMPLATES)
    assert start.fingerprint == reference.fingerprint


def test_flyp_checkpoint_carries_the_finetuned_text_tower(flyp_run, colours):
    last = load_model(f"{flyp_run.run_dir}@last")
    text_keys = [k for k in last.extra_state if k.startswith("task_head.text.")]
    assert text_keys
    # its head is the zero-shot head of the finetuned text tower: recomputing it changes nothing
    head = last.module.head.weight.clone()
    clip.zero_shot_head(last, ["cat", "dog"], TEMPLATES)
    torch.testing.assert_close(last.module.head.weight, head, rtol=1e-5, atol=1e-6)
    # and it differs from the pretrained text tower's head
    start = load_model(f"{flyp_run.run_dir}@0")
    assert not torch.allclose(start.module.head.weight, head)
    # both towers moved
    w0, w1 = start.module.state_dict(), last.module.state_dict()
    assert not torch.equal(w0["vision_model.encoder.layers.0.mlp.fc1.weight"],
                           w1["vision_model.encoder.layers.0.mlp.fc1.weight"])


def test_flyp_resume_equals_uninterrupted(flyp_run, hf_dir, colours, tmp_path):
    opts = dict(model=f"clip:hf:{hf_dir}", data=colours, strategy="flyp", epochs=3, optimizer="adamw", lr=1e-4,
                batch_size=16, augment=False, prompts=TEMPLATES, device="cpu", out=str(tmp_path / "r"), progress=False)
    finetune(stop_after=1, **opts)
    done = finetune(**opts)
    a = load_model(f"{done.run_dir}@last")
    b = load_model(f"{flyp_run.run_dir}@last")
    assert a.fingerprint == b.fingerprint
    for k, v in b.extra_state.items():
        assert torch.equal(a.extra_state[k], v), k


def test_wise_ft_of_a_flyp_run_interpolates_both_towers(flyp_run, colours, tmp_path):
    wise = finetune(strategy="wise-ft", wise_to=f"{flyp_run.run_dir}@last", wise_alphas="0,0.5,1", data=colours,
                    device="cpu", out=str(tmp_path / "w"), progress=False)
    assert wise.config.prompts == TEMPLATES  # the FLYP run's prompts
    m, src = wise.metrics, flyp_run.metrics
    assert float(m["test_acc"].iloc[0]) == float(src["test_acc"].iloc[0])
    assert float(m["test_loss"].iloc[2]) == pytest.approx(float(src["test_loss"].iloc[-1]), abs=1e-6)
    # the middle head is the zero-shot head of the interpolated text tower, not the mean of the two heads
    mid = load_model(f"{wise.run_dir}@1")
    head = mid.module.head.weight.clone()
    clip.zero_shot_head(mid, ["cat", "dog"], TEMPLATES)
    torch.testing.assert_close(mid.module.head.weight, head, rtol=1e-5, atol=1e-6)
    ends = [load_model(f"{flyp_run.run_dir}@{e}").module.head.weight for e in (0, "last")]
    assert not torch.allclose(head, 0.5 * (ends[0] + ends[1]), atol=1e-4)


def test_compare_on_a_flyp_run(flyp_run):
    pool = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    kw = dict(seeds=1, n_images=8, steps=4, cache=None, progress=False)
    start, last = load_model(f"{flyp_run.run_dir}@0"), load_model(f"{flyp_run.run_dir}@last")
    same = compare(last, last.copy(), pool, **kw).per_layer
    assert (same["learning"] == 0).all() and (same["forgetting"] == 0).all()
    moved = compare(start, last, pool, **kw).per_layer
    assert list(moved.index) == start.layers
    assert np.isfinite(moved["forgetting"].to_numpy()).all()
    assert (moved["cka_divergence"].abs() > 0).any()


def test_ft_from_the_zero_shot_head_and_wise_ft(hf_dir, colours, tmp_path):
    common = dict(data=colours, augment=False, device="cpu", progress=False, batch_size=16)
    ft = finetune(model=f"clip:hf:{hf_dir}", strategy="ft", head_init="zero-shot", prompts=TEMPLATES, epochs=1,
                  optimizer="adamw", lr=1e-3, out=str(tmp_path / "ft"), **common)
    start = load_model(f"{ft.run_dir}@0")
    reference = load_model(f"clip:hf:{hf_dir}")
    clip.zero_shot_head(reference, ["cat", "dog"], TEMPLATES)
    assert start.fingerprint == reference.fingerprint  # theta_0 = pretrained backbone + zero-shot head
    wise = finetune(strategy="wise-ft", wise_to=f"{ft.run_dir}@last", wise_alphas="0,1", out=str(tmp_path / "w"),
                    **common)
    assert float(wise.metrics["test_acc"].iloc[0]) == float(ft.metrics["test_acc"].iloc[0])
    assert float(wise.metrics["test_acc"].iloc[1]) == float(ft.metrics["test_acc"].iloc[-1])


def test_lp_and_hp_ft_on_a_clip_model(hf_dir, colours, tmp_path):
    common = dict(model=f"clip:hf:{hf_dir}", data=colours, augment=False, device="cpu", progress=False, batch_size=16)
    lp = finetune(strategy="lp", out=str(tmp_path / "lp"), **common)  # logistic regression on the unit embeddings
    assert float(lp.metrics["test_acc"].iloc[-1]) >= 0.9
    w0, w1 = (load_model(f"{lp.run_dir}@{e}").module.state_dict() for e in (0, "last"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if not k.startswith("head."))
    hp = finetune(strategy="hp-ft", head_init="zero-shot", hp_epochs=1, epochs=1, optimizer="adamw", lr=1e-4,
                  prompts=TEMPLATES, out=str(tmp_path / "hp"), **common)
    assert list(hp.metrics["phase"]) == ["init", "hp", "ft"]
    reference = load_model(f"clip:hf:{hf_dir}")
    clip.zero_shot_head(reference, ["cat", "dog"], TEMPLATES)
    assert load_model(f"{hp.run_dir}@0").fingerprint == reference.fingerprint


def test_flyp_on_open_clip_runs(open_clip_spec, colours, tmp_path):
    with pytest.warns(RandomWeightsWarning):  # no /TAG, so open_clip's weights are a random init
        run = finetune(model=open_clip_spec, data=colours, strategy="flyp", epochs=1, optimizer="adamw", lr=1e-3,
                       batch_size=16, train_size=16, test_size=8, augment=False, device="cpu",
                       out=str(tmp_path / "oc"), progress=False)
    assert np.isfinite(run.metrics["train_loss"].iloc[-1])
    last = load_model(f"{run.run_dir}@last")
    assert any(k.startswith("task_head.text.clip.") for k in last.extra_state)


# --------------------------------------------------------------------------- bad input


@pytest.mark.filterwarnings("ignore::ftlens.errors.RandomWeightsWarning")
def test_not_an_image_text_model_is_a_clear_error(colours, tmp_path):
    with pytest.raises(clip.NotImageTextError, match="not an image-text model"):
        finetune(model="ftlens:vit-micro", data=colours, strategy="flyp", epochs=1, device="cpu",
                 out=str(tmp_path / "a"), progress=False)
    with pytest.raises(clip.NotImageTextError, match="not an image-text model"):
        finetune(model="ftlens:vit-micro", data=colours, strategy="ft", head_init="zero-shot", epochs=1,
                 device="cpu", out=str(tmp_path / "b"), progress=False)
    vit = tmp_path / "vit"
    transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32, image_size=32, patch_size=8)).save_pretrained(vit)
    with pytest.raises(clip.NotImageTextError, match="not a CLIPModel"):
        load_model(f"clip:hf:{vit}")


def test_config_errors():
    with pytest.raises(ConfigError, match="classification"):
        FinetuneConfig(model="clip:hf:x", strategy="flyp", task="reconstruction")
    with pytest.raises(ConfigError, match="prompts"):
        FinetuneConfig(model="clip:hf:x", strategy="flyp", prompts=["a photo"])
    with pytest.raises(ConfigError, match="head_init zero-shot does not apply"):
        FinetuneConfig(model="clip:hf:x", strategy="lp-ft", head_init="zero-shot")
    assert FinetuneConfig(model="clip:hf:x", head_init="zeroshot").head_init == "zero-shot"


def test_missing_dependency_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"ftlens\[hf\]"):
        load_model("clip:hf:/nowhere")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingDependencyError, match=r"ftlens\[clip\]"):
        load_model("clip:open_clip:ViT-B-32")
    assert issubclass(MissingDependencyError, FtlensError)


@pytest.mark.filterwarnings("ignore::ftlens.errors.RandomWeightsWarning")
def test_cli_flyp_and_its_errors(hf_dir, colours, tmp_path):
    from typer.testing import CliRunner

    from ftlens.cli import app

    runner = CliRunner()
    args = ["finetune", "--model", f"clip:hf:{hf_dir}", "--data", colours, "--strategy", "flyp", "--epochs", "1",
            "--train-size", "16", "--test-size", "8", "--batch-size", "8", "--optimizer", "adamw", "--lr", "1e-4",
            "--device", "cpu", "--prompt", "a photo of a {}.", "--prompt", "an image of the {}."]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert load_model(f"{tmp_path / 'ok'}@last").module.head.weight.shape == (2, 16)
    bad = runner.invoke(app, ["finetune", "--model", "ftlens:vit-micro", "--data", colours, "--strategy", "flyp",
                              "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "not an image-text model" in bad.output
    assert "Traceback" not in bad.output
