"""On-disk cache of Gemini caption replies, so a rerun never pays for the same sample twice.

Keyed by (sample content hash, model, prompt version): the same video with the same shot layout,
asked the same way of the same model, gets the stored reply. Only replies that passed
:func:`annotate.reply.check_reply` are stored, and hits are checked again on read, so a failed
sample is asked again on the next run. Entries are JSON files ``ROOT/ab/abcdef….json`` on any
``pyarrow.fs`` filesystem, written atomically; they hold the reply only, never credentials.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pyarrow.fs as pafs

from multishot.dataset.record import SampleRecord
from multishot.dataset.storage import read_json, resolve, write_json

log = logging.getLogger(__name__)


def sample_hash(record: SampleRecord, mp4: bytes) -> str:
    """sha256 over the mp4 bytes and the shot layout (fps, frames, cut frames) the prompt states."""
    digest = hashlib.sha256(mp4)
    digest.update(json.dumps([record.fps, record.num_frames, record.cut_frames]).encode())
    return digest.hexdigest()


class ResponseCache:
    """Stored replies under ``uri`` (local folder or ``pyarrow.fs`` URI). Thread-safe."""

    def __init__(self, uri: str):
        self.fs, self.root = resolve(uri)

    @staticmethod
    def key(sample: str, model: str, prompt_version: str) -> str:
        """The entry name: sha256 of the three parts of the key."""
        return hashlib.sha256("\0".join([sample, model, prompt_version]).encode()).hexdigest()

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored reply (a :class:`annotate.reply.CaptionReply` dump) or None when absent/unreadable."""
        path = self._path(key)
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        try:
            entry = read_json(self.fs, path)
            return entry["reply"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring unreadable cache entry %s: %s", path, err)
            return None

    def put(self, key: str, reply: dict, **about: str) -> None:
        """Store ``reply`` with descriptive fields (model, prompt version, sample key)."""
        write_json(self.fs, self._path(key), {"reply": reply, **about})
