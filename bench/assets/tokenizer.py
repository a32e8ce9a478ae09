"""The CLIP tokenizer of SD-1.5 (openai/clip-vit-large-patch14), built offline.

SD-1.5 tokenizes prompts with the byte-level BPE of OpenAI CLIP: 49,408 tokens (256 byte symbols, the
same 256 with the end-of-word mark ``</w>``, 48,894 merges, then ``<|startoftext|>`` = 49406 and
``<|endoftext|>`` = 49407), lowercased, runs of whitespace collapsed, 77 positions with the end token
as padding. ``open_clip`` ships the merge list of that BPE (``bpe_simple_vocab_16e6.txt.gz``); this
module turns it into the ``vocab.json`` / ``merges.txt`` pair that ``transformers.CLIPTokenizer``
reads, writes the pair once into the tool cache, and loads it with the library's own loader. No
download is needed, so the config-built teachers (``tiny``, ``sd15-arch``) and the tests get the
real tokenizer.

Text cleaning is the one of ``transformers.CLIPTokenizer`` (NFC, whitespace runs to one space,
lowercase), which is also what a real SD-1.5 ``tokenizer/`` folder gives under transformers >= 5.
``open_clip`` additionally runs ``ftfy.fix_text`` and ``html.unescape`` first, so the two differ only
on text that those change (HTML entities such as ``&amp;``, curly quotes, mojibake).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bench.core.atomic import atomic_write_text
from bench.core.errors import MissingResourceError

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
#: merges used by CLIP: the file holds more; CLIP keeps 49152 - 256 - 2 of them.
NUM_MERGES = 49152 - 256 - 2


def bench_cache_dir() -> Path:
    """The tool's cache: ``$BENCH_CACHE_DIR``, default ``~/.cache/distill-bench``."""
    root = os.environ.get("BENCH_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "distill-bench"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes 0..255, in CLIP's vocabulary order.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves and come
    first; every other byte b is mapped to chr(256 + k), k counting those bytes in increasing order.
    This is the mapping of ``tokenizers.pre_tokenizers.ByteLevel``, so ids line up with its output.
    """
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(others))]


@dataclass(frozen=True)
class ClipBpe:
    """CLIP's vocabulary (token -> id) and ranked merges, as transformers' files spell them."""

    vocab: dict[str, int]
    merges: list[str]  # "left right", rank order


def open_clip_bpe_path() -> Path:
    try:
        import open_clip
    except ImportError as err:  # pragma: no cover - open_clip is a dependency
        raise MissingResourceError(
            "building the CLIP tokenizer offline needs the BPE merge list that open_clip ships "
            "(open_clip/bpe_simple_vocab_16e6.txt.gz); install open_clip_torch"
        ) from err
    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MissingResourceError(f"the CLIP BPE merge list is missing: {path} (reinstall open_clip_torch)")
    return path


def read_clip_bpe(path: str | Path) -> ClipBpe:
    """Parse open_clip's gzipped merge list into CLIP's vocabulary and merges."""
    lines = gzip.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
    # line 0 is a version header; then one merge per line, most frequent first
    pairs = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]
    if len(pairs) != NUM_MERGES or any(len(p) != 2 for p in pairs):
        raise MissingResourceError(f"{path} is not CLIP's BPE merge list ({len(pairs)} merges read)")
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(p) for p in pairs] + [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise MissingResourceError(f"{path}: expected {VOCAB_SIZE} distinct tokens, got {len(vocab)}")
    return ClipBpe(vocab=vocab, merges=[f"{a} {b}" for a, b in pairs])


def write_clip_tokenizer_files(folder: str | Path, bpe: ClipBpe) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` (each atomically)."""
    folder = Path(folder)
    atomic_write_text(folder / "vocab.json", json.dumps(bpe.vocab, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(bpe.merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "model_max_length": CONTEXT_LENGTH,
        "do_lower_case": True,
    }
    # written last: its presence marks a complete folder
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def clip_tokenizer_dir() -> Path:
    """The cached tokenizer folder, created on first use. Its name carries the hash of the source
    merge list, so a different open_clip file never reuses a stale folder."""
    source = open_clip_bpe_path()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    folder = bench_cache_dir() / "tokenizers" / f"clip-vit-large-patch14-{digest}"
    if not (folder / "tokenizer_config.json").is_file():
        logger.info("writing the CLIP tokenizer files to %s", folder)
        write_clip_tokenizer_files(folder, read_clip_bpe(source))
    return folder


def build_clip_tokenizer(max_length: int = CONTEXT_LENGTH):
    """SD-1.5's tokenizer as a ``transformers.CLIPTokenizer``: bos 49406, eos = pad = 49407, 77 tokens."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), model_max_length=max_length)
    if (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) != (BOS_ID, EOS_ID, EOS_ID):
        raise MissingResourceError(
            f"the CLIP tokenizer built in {clip_tokenizer_dir()} has unexpected special ids "
            f"(bos {tokenizer.bos_token_id}, eos {tokenizer.eos_token_id}, pad {tokenizer.pad_token_id}); "
            "delete that folder and retry"
        )
    return tokenizer
