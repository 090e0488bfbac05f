"""Tiny random-weight text models saved as Hugging Face directories (model + tokenizer), offline.

The tokenizer is a WordPiece over the words of :data:`WORDS` (built with the ``tokenizers``
library, saved with ``save_pretrained``), the same for every architecture, so that the models
differ only in their transformer.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("the a an is on of and to in it cat dog man woman plays guitar piano sleeps sofa bed market stock "
         "fell rose sharply today weather rain sun sky blue red green code program computer bug fix run fast "
         "slow song poem love war peace people work science").split()

TINY = dict(hidden=32, layers=3, heads=2, ffn=64, positions=64)


def tokenizer():
    """A lower-casing WordPiece tokenizer with [CLS]/[SEP] around every text."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(special + sorted(set(WORDS)) + [".", ",", "!", "?"])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def config(kind: str):
    import transformers as T

    t = tokenizer()
    v, h, n, heads, ffn, pos = len(t), TINY["hidden"], TINY["layers"], TINY["heads"], TINY["ffn"], TINY["positions"]
    if kind == "bert":
        return T.BertConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                            intermediate_size=ffn, max_position_embeddings=pos)
    if kind == "roberta":
        return T.RobertaConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                               intermediate_size=ffn, max_position_embeddings=pos + 2, pad_token_id=0)
    if kind == "distilbert":
        return T.DistilBertConfig(vocab_size=v, dim=h, n_layers=n, n_heads=heads, hidden_dim=ffn,
                                  max_position_embeddings=pos)
    if kind == "gpt2":
        return T.GPT2Config(vocab_size=v, n_embd=h, n_layer=n, n_head=heads, n_positions=pos, bos_token_id=2,
                            eos_token_id=3)
    raise ValueError(kind)


def save(directory: Path, kind: str, *, seed: int = 0, weights: bool = True, pooling: str | None = None) -> Path:
    """A ``save_pretrained`` directory of a tiny ``kind`` model (random weights from ``seed``) and
    its tokenizer; ``weights=False`` writes the config alone (a random-init model when loaded);
    ``pooling`` writes a sentence-transformers pooling config (``"mean"`` or ``"cls"``)."""
    import transformers as T

    directory = Path(directory)
    cfg = config(kind)
    torch.manual_seed(seed)
    model = T.AutoModel.from_config(cfg)
    if weights:
        model.save_pretrained(directory)
    else:
        cfg.save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    if pooling is not None:
        import json

        (directory / "1_Pooling").mkdir()
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"pooling_mode_cls_token": pooling == "cls", "pooling_mode_mean_tokens": pooling == "mean"}))
    return directory
