"""WordPiece tokenizers for the tiny backbone, built with the `tokenizers` library.

BERT-style: [CLS] caption [SEP], [PAD] for padding (right), [UNK] for unknown pieces.
Chinese (and other CJK ideograph) characters are split one per token, as mBERT does;
accents are kept (Czech and French need them).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dasd_lib.backbones.base import BackboneError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def train_wordpiece(texts: list[str], vocab_size: int, *, context_length: int,
                    lowercase: bool = True) -> PreTrainedTokenizerFast:
    """A WordPiece tokenizer for `texts` with at most `vocab_size` entries (more only when the
    special tokens and the alphabet alone exceed it), the same for the same texts.

    The vocabulary is built here rather than by `tokenizers`' WordPieceTrainer, whose result
    changes from call to call (huggingface/tokenizers#1794: ## pieces get ids in hash-map
    order, which then breaks ties between merges). Entries: the special tokens; every
    character, word-initial and as a `##` continuation (so any text of the alphabet
    tokenizes without [UNK]); then whole words (BERT normalisation and pre-tokenisation)
    by descending count, ties alphabetical. Words outside the budget split into characters.
    """
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise BackboneError("train_wordpiece: no non-empty texts to train the tokenizer on")
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=False, lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in texts
                     for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    alphabet = sorted({ch for word in counts for ch in word})
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for piece in [*alphabet, *(f"##{ch}" for ch in alphabet)]:
        vocab.setdefault(piece, len(vocab))
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                     max_input_chars_per_word=max(100, max(map(len, counts)))))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
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
