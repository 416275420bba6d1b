"""Reader/writer for teachcam embedding cache files (.tce) written by `teachcam embed` (owns the Python side of the format).

Format, version 1:

    line 1: b"teachcam-embeddings 1\\n"
    line 2: one JSON object + b"\\n":
            {"dim": 1280, "count": N, "backbone_sha256": "<hex>", "precision": "w8",
             "classes": ["ants", "bees"], "items": [{"path": "...", "label": 0}, ...]}
    then    N*dim little-endian float32, row-major in item order
    then    32 bytes: SHA-256 of everything before them

``read_tce`` verifies the magic line, the header, the exact length and the
checksum, and raises ``TceError`` on any mismatch.  ``write_tce`` exists for
tests and tooling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"teachcam-embeddings 1\n"
DIGEST_LEN = 32


class TceError(ValueError):
    """The file is not a valid teachcam embedding cache."""


@dataclass
class Embeddings:
    embeddings: np.ndarray  # (count, dim) float32
    labels: np.ndarray  # (count,) int64
    classes: list[str]
    paths: list[str]
    backbone_sha256: str
    precision: str
    header: dict = field(repr=False, default_factory=dict)


def parse_tce(data: bytes, name: str = "<bytes>") -> Embeddings:
    """Parse and verify the bytes of a .tce file."""
    if not data.startswith(MAGIC):
        raise TceError(f"{name}: not a teachcam embedding file (bad magic line)")
    if len(data) < len(MAGIC) + DIGEST_LEN:
        raise TceError(f"{name}: truncated")
    body, digest = data[:-DIGEST_LEN], data[-DIGEST_LEN:]
    if hashlib.sha256(body).digest() != digest:
        raise TceError(f"{name}: SHA-256 checksum mismatch (file corrupt or truncated)")
    nl = body.find(b"\n", len(MAGIC))
    if nl < 0:
        raise TceError(f"{name}: missing header line")
    try:
        header = json.loads(body[len(MAGIC) : nl].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TceError(f"{name}: bad JSON header: {e}") from e
    if not isinstance(header, dict):
        raise TceError(f"{name}: header is not a JSON object")
    try:
        dim, count = int(header["dim"]), int(header["count"])
        classes = [str(c) for c in header["classes"]]
        items = header["items"]
    except (KeyError, TypeError, ValueError) as e:
        raise TceError(f"{name}: header field missing or malformed: {e}") from e
    if dim <= 0 or count < 0 or len(items) != count:
        raise TceError(f"{name}: header says dim={dim} count={count} but has {len(items)} items")
    payload = body[nl + 1 :]
    if len(payload) != count * dim * 4:
        raise TceError(f"{name}: expected {count * dim * 4} bytes of float32 data, found {len(payload)}")
    emb = np.frombuffer(payload, dtype="<f4").reshape(count, dim).astype(np.float32)
    try:
        labels = np.array([int(it["label"]) for it in items], dtype=np.int64)
        paths = [str(it["path"]) for it in items]
    except (KeyError, TypeError, ValueError) as e:
        raise TceError(f"{name}: bad item entry: {e}") from e
    if count and (labels.min() < 0 or labels.max() >= len(classes)):
        raise TceError(f"{name}: label out of range for {len(classes)} classes")
    if not np.all(np.isfinite(emb)):
        raise TceError(f"{name}: non-finite embedding values")
    return Embeddings(emb, labels, classes, paths, str(header.get("backbone_sha256", "")),
                      str(header.get("precision", "")), header)


def select_split(e: Embeddings, split: str) -> Embeddings:
    """Rows whose item carries `"split": split` (all rows when no item carries a split),
    matching `EmbeddingSet::select_split` on the Rust side."""
    items = e.header.get("items", [])
    tagged = any("split" in it for it in items)
    keep = np.array([not tagged or it.get("split") == split for it in items], dtype=bool)
    return Embeddings(e.embeddings[keep], e.labels[keep], e.classes,
                      [p for p, k in zip(e.paths, keep) if k], e.backbone_sha256, e.precision, e.header)


def read_tce(path) -> Embeddings:
    """Read and verify a .tce file from disk."""
    return parse_tce(Path(path).read_bytes(), str(path))


def encode_tce(embeddings: np.ndarray, labels, classes, paths, backbone_sha256: str, precision: str) -> bytes:
    """Serialise embeddings in the .tce format (same bytes layout the Rust side writes)."""
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    if emb.ndim != 2:
        raise ValueError("embeddings must be 2-D")
    header = {
        "dim": int(emb.shape[1]),
        "count": int(emb.shape[0]),
        "backbone_sha256": backbone_sha256,
        "precision": precision,
        "classes": list(classes),
        "items": [{"path": str(p), "label": int(l)} for p, l in zip(paths, labels, strict=True)],
    }
    body = MAGIC + json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + emb.tobytes()
    return body + hashlib.sha256(body).digest()


def write_tce(path, *args, **kwargs) -> None:
    Path(path).write_bytes(encode_tce(*args, **kwargs))
