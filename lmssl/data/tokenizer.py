"""Tokenizer training (WordPiece, byte-level BPE, SentencePiece unigram) and loading.

Every tokenizer is stored as a Hugging Face `tokenizers` JSON file (`tokenizers/NAME/tokenizer.json`),
so checkpoints carry one self-contained file whatever the recipe. Unigram models are trained
with the `sentencepiece` library and converted (pieces and scores) into a `tokenizers` Unigram.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lmssl.data.paths import shipped
from lmssl.errors import ConfigError
from lmssl.storage.atomic import atomic_directory
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

KINDS = ("wordpiece", "bpe", "unigram")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT_EOS = "<|endoftext|>"
# A token's role is found by its string, whichever recipe made it.
ROLE_STRINGS = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>", GPT_EOS),
    "mask": ("[MASK]", "<mask>"),
    "eos": (GPT_EOS, "[SEP]", "</s>"),
}
# Prefixes marking how a vocabulary entry relates to word boundaries (for whole-word masking).
CONTINUATION_PREFIX = "##"  # WordPiece: continues the previous word
WORD_START_PREFIXES = ("\u0120", "\u2581")  # byte-level BPE 'Ġ', SentencePiece '▁': starts a word


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special-token roles the objectives need."""

    def __init__(self, tokenizer: Tokenizer, path: Path | None = None):
        self.tokenizer = tokenizer
        self.path = path
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.roles: dict[str, int | None] = {
            role: next((vocab[s] for s in strings if s in vocab), None) for role, strings in ROLE_STRINGS.items()}
        self.special_ids = sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TextTokenizer":
        """A tokenizers JSON file; ConfigError naming it when it is missing or not one."""
        if not Path(path).is_file():
            raise ConfigError(f"{path}: tokenizer file not found")
        try:
            return cls(Tokenizer.from_file(str(path)), Path(path))
        except Exception:  # tokenizers raises a bare Exception for JSON it cannot parse
            raise ConfigError(f"{path}: not a tokenizers JSON file (it does not parse as one)") from None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __getattr__(self, name: str):
        # pad_id, cls_id, sep_id, mask_id, unk_id, eos_id
        if name.endswith("_id") and name[:-3] in ROLE_STRINGS:
            return self.roles[name[:-3]]
        raise AttributeError(name)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def fingerprint(self) -> str:
        return hashlib.sha1(self.tokenizer.to_str().encode()).hexdigest()[:16]

    def word_start_table(self) -> np.ndarray:
        """(V,) bool: True where a token begins a new word. Special tokens always do."""
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        table = np.ones(self.vocab_size, dtype=bool)
        wordpiece = isinstance(self.tokenizer.model, models.WordPiece)
        for token, idx in vocab.items():
            if idx in self.special_ids:
                continue
            if wordpiece:
                table[idx] = not token.startswith(CONTINUATION_PREFIX)
            else:
                table[idx] = token.startswith(WORD_START_PREFIXES)
        return table

    def save(self, directory: Path) -> None:
        self.tokenizer.save(str(directory / "tokenizer.json"))

    def causal_template(self, classifier: bool = False) -> "TextTokenizer":
        """A copy for a causal model's export that adds, when asked to, the special tokens lmssl puts around a text:
        the end-of-text token before it, as `lmssl generate` starts from it and every pretraining document follows
        one (a causal language model's export, which `pipeline("text-generation")` calls with special tokens), or
        a causal classifier's <eos> A <eos> and <eos> A <sep> B <eos> (lmssl.downstream.encoding's layouts)."""
        tok = Tokenizer.from_str(self.tokenizer.to_str())
        eos = tok.id_to_token(self.eos_id)
        if classifier:
            sep = tok.id_to_token(self.sep_id if self.sep_id is not None else self.eos_id)
            single, pair = f"{eos}:0 $A:0 {eos}:0", f"{eos}:0 $A:0 {sep}:0 $B:1 {eos}:1"
        else:  # transformers' own template for add_bos_token (tokenization_utils_tokenizers.update_post_processor)
            single, pair = f"{eos}:0 $A:0", f"{eos}:0 $A:0 {eos}:1 $B:1"
        specials = {eos: self.eos_id} | ({sep: tok.token_to_id(sep)} if classifier else {})
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=list(specials.items()))
        return TextTokenizer(tok, self.path)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------

def progress_shown() -> bool:
    """The tokenizers library's bars only on a terminal: elsewhere they are blank lines in a log."""
    return sys.stderr.isatty()


def _wordpiece(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                        show_progress=progress_shown())
    return tok, trainer


def _bpe(vocab_size: int) -> tuple[Tokenizer, trainers.Trainer]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[GPT_EOS], show_progress=progress_shown(),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def _bert_post_processor(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


def _unigram(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with corpus.open("w") as f:
            for text in texts:
                for line in text.splitlines():
                    if line.strip():
                        f.write(line.strip() + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "spm"), model_type="unigram", vocab_size=vocab_size,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"],
            pad_piece="[PAD]", unk_piece="[UNK]", character_coverage=1.0, minloglevel=2,
            hard_vocab_limit=False)  # a small corpus may not support vocab_size pieces: take fewer, as BPE does
        sp = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "spm.model"))
        pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(pieces, unk_id=1, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(BERT_SPECIALS)
    return tok


@contextlib.contextmanager
def progress_on_stderr():
    """The tokenizers / sentencepiece trainers draw their progress on file descriptor 1; stdout is for JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Train a tokenizer of `kind` on an iterable of documents."""
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r}; choose one of {', '.join(KINDS)}")
    with progress_on_stderr():
        if kind == "unigram":
            tok = _unigram(texts, vocab_size)
        else:
            tok, trainer = _wordpiece(vocab_size) if kind == "wordpiece" else _bpe(vocab_size)
            tok.train_from_iterator(_lines(texts), trainer=trainer)
    if kind != "bpe":
        _bert_post_processor(tok)
    return TextTokenizer(tok)


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield from (line for line in text.splitlines() if line.strip())


def save_tokenizer(tok: TextTokenizer, directory: Path, recipe: dict) -> Path:
    """Write tokenizer.json and recipe.json into `directory`, each renamed into place (other files there stay)."""
    with atomic_directory(directory, exists="merge") as tmp:
        tok.save(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return directory / "tokenizer.json"


def tokenizers_root() -> Path:
    return Path(os.environ.get("LMSSL_TOKENIZERS", shipped("tokenizers")))


def tokenizer_path(name_or_path: str) -> Path:
    """`name` -> tokenizers/name/tokenizer.json; an existing file, or a directory holding tokenizer.json, as is."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if (p / "tokenizer.json").is_file():
        return p / "tokenizer.json"
    return tokenizers_root() / name_or_path / "tokenizer.json"
