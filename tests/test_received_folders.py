"""Folders received from others, in the field's formats: pickled weights are refused unopened with one
line that says to convert them to safetensors (CLI: exit 2, no traceback), and a model's own Python
code (trust_remote_code) never runs."""

from __future__ import annotations

import json
import pickle

import pytest
from typer.testing import CliRunner

from ftlens.cli import app
from ftlens.errors import ModelError
from ftlens.models import load_model

transformers = pytest.importorskip("transformers")


class _Payload:
    """A pickle that would write a file when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _vit_folder(path, pickled, marker):
    config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                    image_size=16, patch_size=8)
    config.save_pretrained(path)
    if pickled:
        (path / "pytorch_model.bin").write_bytes(pickle.dumps({"payload": _Payload(marker)}))
    return path


def test_pickled_hf_weights_are_refused_unopened(tmp_path):
    marker = tmp_path / "ran"
    folder = _vit_folder(tmp_path / "hf-vit", pickled=True, marker=marker)
    with pytest.raises(ModelError, match=r"pickle \(pytorch_model\.bin\).*safetensors"):
        load_model(f"hf:{folder}")
    result = CliRunner().invoke(app, ["layers", f"hf:{folder}"])
    assert result.exit_code == 2, result.output
    assert "safetensors" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_pickled_peft_adapter_is_refused_unopened(tmp_path):
    pytest.importorskip("peft")
    marker = tmp_path / "ran"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["qkv"], "base_model_name_or_path": None}))
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelError, match=r"adapter_model\.bin.*safetensors"):
        load_model(f"peft:{adapter}", base="ftlens:vit-micro")
    result = CliRunner().invoke(app, ["layers", f"peft:{adapter}"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "adapter_model.bin" in result.output
    assert not marker.exists()


def test_remote_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                           "AutoModel": "modeling_evil.EvilModel"}}))
    with pytest.raises(ModelError, match="trust_remote_code"):
        load_model(f"hf:{folder}")
    with pytest.raises(ModelError, match="never runs"):
        load_model(f"hf:{folder}", trust_remote_code=True)
    result = CliRunner().invoke(app, ["layers", f"hf:{folder}"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "trust_remote_code" in result.output
    assert not marker.exists()
