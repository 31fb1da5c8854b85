"""Text: the original ImageBind (CLIP) tokenizer, and reading text files for indexing.

Tokenisation uses open_clip's ``SimpleTokenizer`` (the same CLIP byte-pair code
and ``bpe_simple_vocab_16e6`` vocabulary ImageBind ships), with its cleaning:
ftfy, HTML-unescape twice, whitespace collapsed, lower case.
"""
from __future__ import annotations

import codecs
import os
import threading
import unicodedata
from typing import Any

import torch

from xsearch.errors import MediaError

CONTEXT_LENGTH = 77
# Text files are read up to this many bytes: the model sees at most 75 tokens anyway.
MAX_TEXT_BYTES = 1 << 20
# Share of control characters (other than ordinary whitespace) above which we call data binary.
MAX_CONTROL_FRACTION = 0.05

# The original CLIP/ImageBind split pattern. open_clip's own pattern recognises its
# "<start_of_text>" spelling of the special tokens instead of CLIP's "<|startoftext|>";
# we restore CLIP's so that a text containing those strings tokenises as the original does.
_CLIP_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# CLIP's special-token strings -> open_clip's names for the same ids (49406, 49407).
_SPECIAL_CACHE = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}
_MAX_BPE_CACHE = 200_000

_tokenizer: Any = None
_tokenizer_lock = threading.Lock()


def _open_clip_tokenizer_module() -> Any:
    """``open_clip/tokenizer.py`` alone. ``import open_clip.tokenizer`` would first run the
    package's ``__init__`` (its models, timm, torchvision): ~1.5 s and ~170 MB for a module
    that needs only ftfy, regex, numpy, torch and its vocabulary file."""
    import importlib.util
    import sys

    name = "xsearch._open_clip_tokenizer"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("open_clip is not installed (pip install open_clip_torch)")
        path = os.path.join(list(spec.submodule_search_locations)[0], "tokenizer.py")
        file_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        sys.modules[name] = module
    return module


def _get_tokenizer() -> Any:
    """Build the tokenizer once (the vocabulary file ships inside open_clip; no network)."""
    global _tokenizer
    if _tokenizer is None:
        with _tokenizer_lock:
            if _tokenizer is None:
                import regex

                SimpleTokenizer = _open_clip_tokenizer_module().SimpleTokenizer
                tok = SimpleTokenizer(context_length=CONTEXT_LENGTH, clean="lower")
                tok.pat = regex.compile(_CLIP_PATTERN, regex.IGNORECASE)
                tok.cache = dict(_SPECIAL_CACHE)
                _tokenizer = tok
    return _tokenizer


def tokenize(texts: list[str] | str, context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Texts -> LongTensor (N, context_length): start token, at most context_length - 2 tokens,
    end token always last, zero padding. Long texts are truncated, never rejected."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"tokenize expects strings, got {type(t).__name__}")
    if not texts:
        return torch.zeros(0, context_length, dtype=torch.long)
    tok = _get_tokenizer()
    if len(tok.cache) > _MAX_BPE_CACHE:
        # The BPE memo grows with every distinct word; keep a long-running indexer bounded.
        tok.cache = dict(_SPECIAL_CACHE)
    return tok(texts, context_length=context_length)


def _read_head(path: str | os.PathLike) -> tuple[bytes, bool]:
    """The first MAX_TEXT_BYTES of the file, and whether the file goes on beyond them."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except IsADirectoryError as e:
        raise MediaError(path, "is a directory, not a text file") from e
    except OSError as e:
        raise MediaError(path, f"cannot read file ({e.strerror or e})") from e
    return data[:MAX_TEXT_BYTES], len(data) > MAX_TEXT_BYTES


def _decode(data: bytes, truncated: bool) -> str | None:
    """Decode as UTF-8 (or UTF-16 with a BOM); None when the bytes are not valid in either."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    # final=False lets a multi-byte character cut by the size limit drop out instead of failing.
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        return decoder.decode(data, final=not truncated)
    except UnicodeDecodeError:
        return None


def _decode_any(data: bytes, truncated: bool) -> tuple[str, str]:
    """(text, HTTP charset name): UTF-8 or UTF-16 with a BOM, else Windows-1252 (Latin-1 for the five
    bytes cp1252 leaves undefined)."""
    text = _decode(data, truncated)
    if text is not None:
        return text, "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8"
    try:
        return data.decode("cp1252"), "windows-1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "iso-8859-1"


def read_text_head(path: str | os.PathLike, limit: int) -> tuple[str, str]:
    """(text, charset) of a file's first ``limit`` bytes, decoded as ``load_text`` decodes them; the
    charset is the HTTP name, for serving the file. Raises OSError."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return _decode_any(data[:limit], len(data) > limit)


def _control_fraction(text: str) -> float:
    if not text:
        return 0.0
    # Only C0/C1 control characters: unassigned code points may just be emoji newer than Python's tables.
    bad = sum(1 for ch in text if ch not in "\t\n\r\f\v" and unicodedata.category(ch) == "Cc")
    return bad / len(text)


def load_text(path: str | os.PathLike) -> str:
    """Read a .txt/.md file as text. Rejects binary data and empty or whitespace-only files."""
    data, truncated = _read_head(path)
    if not data:
        raise MediaError(path, "text file is empty")
    is_utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if b"\x00" in data and not is_utf16:
        raise MediaError(path, "binary data (contains NUL bytes), not a text file")
    # Not UTF-8: a legacy single-byte encoding is accepted only when the result reads as text (below).
    text = _decode_any(data, truncated)[0]
    if _control_fraction(text) > MAX_CONTROL_FRACTION:
        raise MediaError(path, "binary data (mostly non-printable characters), not a text file")
    if not text.strip():
        raise MediaError(path, "text file contains only whitespace")
    return text
