"""The byte-level tokenizer of the text models: byte b is token id b.

``indrnn-train text`` trains on a file's raw bytes, so the ids are the bytes themselves; this
tokenizer gives the same ids for text (its UTF-8 bytes) and decodes ids back to text. It is a
plain ``tokenizers`` byte-level tokenizer (``tokenizer.json``, no custom code), so a folder it is
saved in loads with ``AutoTokenizer.from_pretrained`` and ``pipeline(..., model=folder)``.
"""

from __future__ import annotations

BYTE_VOCAB_SIZE = 256


def _byte_chars() -> list[str]:
    """The character that stands for each byte in ``tokenizers``' ByteLevel pre-tokenizer (GPT-2's
    table: printable Latin-1 bytes stand for themselves, the others for 256, 257, ... in order)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    chars, shifted = [], 0
    for b in range(BYTE_VOCAB_SIZE):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(BYTE_VOCAB_SIZE + shifted))
            shifted += 1
    return chars


def byte_tokenizer():
    """A ``PreTrainedTokenizerFast`` whose ids are bytes: text is encoded as its UTF-8 bytes,
    byte b as id b (no special token is added), and ids decode back to text (bytes that are not
    valid UTF-8 decode to U+FFFD). Id 256 is ``<pad>``, for batches: 257 ids in all. It pads on
    the left, as generation needs. The text "<pad>" is its five bytes like any other text
    (``split_special_tokens``): only padding makes id 256, which training never sees. Words
    given with ``is_split_into_words=True`` are encoded back to back (bytes have no word
    boundaries, and a prefix space would change every text's ids): put the spaces in the words.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: b for b, char in enumerate(_byte_chars())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                   padding_side="left", split_special_tokens=True)
