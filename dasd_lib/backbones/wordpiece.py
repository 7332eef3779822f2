"""WordPiece tokenizers for the tiny backbone, trained with the `tokenizers` library.

BERT-style: [CLS] caption [SEP], [PAD] for padding (right), [UNK] for unknown pieces.
Chinese (and other CJK ideograph) characters are split one per token, as mBERT does;
accents are kept (Czech and French need them).
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dasd_lib.backbones.base import BackboneError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def train_wordpiece(texts: list[str], vocab_size: int, *, context_length: int,
                    lowercase: bool = True) -> PreTrainedTokenizerFast:
    """Train a WordPiece tokenizer on `texts` (a vocabulary of at most `vocab_size`)."""
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BackboneError("train_wordpiece: no non-empty texts to train the tokenizer on")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", padding_side="right",
                                   model_max_length=context_length)


def load_tokenizer(path: str | Path, what: str):
    """A tokenizer saved with save_pretrained (or a hub id); padding forced to the right."""
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise BackboneError(f"{what}: cannot load a tokenizer from '{path}' ({err}); the folder "
                            f"needs tokenizer files written by save_pretrained") from err
    tok.padding_side = "right"  # pooling takes the last real token
    if tok.pad_token is None:
        raise BackboneError(f"{what}: the tokenizer at '{path}' has no pad token")
    return tok
