"""Corpora, tokenizers, tokenization cache, packing, sentence pairs and sentences, the resumable loader."""
from lmssl.data.build import load_tokenizer, sentence_pairs, sequences
from lmssl.data.packing import Example, PackedSequences, StreamingSequences
from lmssl.data.sentence_pairs import SentencePairs
from lmssl.data.tokenizer import TextTokenizer

__all__ = ["Example", "PackedSequences", "SentencePairs", "StreamingSequences", "TextTokenizer", "load_tokenizer",
           "sentence_pairs", "sequences"]
