"""Self-test of tools/tce.py: round-trips a numpy-written .tce and rejects damaged files (run: python tools/test_tce.py)."""

import hashlib
import json
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tce import MAGIC, TceError, read_tce  # noqa: E402


def handmade(emb: np.ndarray, labels, classes) -> bytes:
    """Build a file byte by byte from the spec, independently of tce.encode_tce."""
    header = {"dim": emb.shape[1], "count": emb.shape[0], "backbone_sha256": "ab" * 32,
              "precision": "w8", "classes": classes,
              "items": [{"path": f"img/{i}.jpg", "label": l} for i, l in enumerate(labels)]}
    body = MAGIC + json.dumps(header).encode() + b"\n" + emb.astype("<f4").tobytes()
    return body + hashlib.sha256(body).digest()


class TceTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(3)
        self.emb = rng.normal(size=(5, 7)).astype(np.float32)
        self.labels = [0, 1, 1, 0, 1]
        self.data = handmade(self.emb, self.labels, ["ants", "bees"])
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "x.tce"

    def tearDown(self):
        self.tmp.cleanup()

    def test_roundtrip(self):
        self.path.write_bytes(self.data)
        e = read_tce(self.path)
        np.testing.assert_array_equal(e.embeddings, self.emb)
        self.assertEqual(e.labels.tolist(), self.labels)
        self.assertEqual(e.classes, ["ants", "bees"])
        self.assertEqual(e.paths[2], "img/2.jpg")
        self.assertEqual(e.precision, "w8")

    def test_flipped_byte_rejected(self):
        bad = bytearray(self.data)
        bad[len(bad) // 2] ^= 1
        self.path.write_bytes(bytes(bad))
        with self.assertRaises(TceError):
            read_tce(self.path)

    def test_truncated_rejected(self):
        self.path.write_bytes(self.data[:-5])
        with self.assertRaises(TceError):
            read_tce(self.path)

    def test_bad_magic_rejected(self):
        self.path.write_bytes(b"teachcam-embeddings 2\n" + self.data[len(MAGIC):])
        with self.assertRaises(TceError):
            read_tce(self.path)

    def test_count_mismatch_rejected_even_with_valid_checksum(self):
        body = self.data[:-32][:-7 * 4]  # drop the last row, re-sign
        self.path.write_bytes(body + hashlib.sha256(body).digest())
        with self.assertRaises(TceError):
            read_tce(self.path)


if __name__ == "__main__":
    unittest.main()
