"""Image-text (CLIP-style) models: the old path of the ``clip:`` family's image-text code.

The code lives in its family's package: :mod:`ftlens.models.families.clip.towers` (the image
tower as an analysable classifier, the text tower, the tokenizer, loading) and
:mod:`ftlens.models.families.clip.zero_shot` (zero-shot heads, :func:`image_text_of`). Every name
that was importable from here still is.
"""

from __future__ import annotations

from ftlens.errors import (  # noqa: F401
    FtlensError,
    MissingDependencyError,
    NotImageTextError,
    OfflineError,
)
from ftlens.models.families.clip.towers import (  # noqa: F401
    _OPENAI_MEAN,
    _OPENAI_STD,
    _TEXT_ATTR,
    DEFAULT_TEMPLATES,
    MAX_SCALE,
    PREFIX,
    TEXT_KEY,
    ClipImageClassifier,
    HFImageTower,
    HFTextTower,
    ImageText,
    L2Normalize,
    OpenClipImageTower,
    OpenClipTextTower,
    TextTower,
    Tokenizer,
    _hf_missing,
    _load_hf,
    _load_open_clip,
    _open_clip_from_config,
    _split_open_clip,
    build_for_models,
    describe,
    is_clip_spec,
    load_image_text,
    load_tokenizer,
    loads_weights,
    require,
)
from ftlens.models.families.clip.zero_shot import (  # noqa: F401
    check_image_text,
    class_embeddings,
    class_prompts,
    image_text_of,
    install_head,
    zero_shot_head,
    zero_shot_weights,
)
