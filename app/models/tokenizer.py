"""The real CLIP BPE tokenizer of SD 2.x, written from the BPE merges file shipped
in ``assets/``: the demo model and the random-weights builder both use it."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

_BPE_FILE = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Turn OpenAI's BPE merges file into ``vocab.json`` + ``merges.txt``.

    This is the tokenizer of CLIP ViT-L and OpenCLIP ViT-H (SD 2.x) alike:
    256 byte tokens, the same with ``</w>``, the first 48,894 merges joined,
    then the two special tokens: 49,408 entries.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(_BPE_FILE, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",  # SD 2.x pads with "!" (id 0)
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def _bytes_to_unicode() -> dict[int, str]:
    # The byte -> printable-character table shared by GPT-2 and CLIP.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The real CLIP tokenizer with SD 2.x's settings (pad token ``!``)."""
    from transformers import CLIPTokenizer

    folder = Path(cache_dir) if cache_dir else _default_cache() / "tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        # Write beside, then rename: several processes may build it at once.
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=folder.parent if folder.parent.exists() else None))
        write_clip_tokenizer_files(tmp)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _default_cache() -> Path:
    root = os.environ.get("T2I_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "text-to-image-generator")
    return Path(root)
