"""Content-addressed frame storage in immutable zip packs.

DVC hashes and transfers every file it tracks one by one, and its own users report hours for
100k+ small files. Frames therefore live in packs of a few thousand (`ZIP_STORED`: JPEG/PNG
are already compressed, and stored members can be read at random). A pack is written once and
never rewritten, so a new dataset version only adds new packs and DVC moves only those.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

PACK_DIR = "frames/packs"  # relative to the data directory
PACK_SIZE = 4096  # frames per pack


class FrameStore:
    """All frames ever admitted, addressed by sha256; paths are relative to `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._index: dict[str, str] | None = None
        self._open: dict[str, zipfile.ZipFile] = {}

    @property
    def pack_dir(self) -> Path:
        return self.data_dir / PACK_DIR

    def index(self) -> dict[str, str]:
        """sha256 -> path of every stored frame (read from the packs' central directories)."""
        if self._index is None:
            self._index = {}
            for pack in sorted(self.pack_dir.glob("*.zip")) if self.pack_dir.exists() else []:
                with zipfile.ZipFile(pack) as zf:
                    for member in zf.namelist():
                        self._index[member.split(".", 1)[0]] = f"{PACK_DIR}/{pack.name}/{member}"
        return self._index

    def read(self, path: str) -> bytes:
        """Bytes of a frame given its manifest path ("frames/packs/<pack>.zip/<member>")."""
        pack, _, member = path.rpartition("/")
        zf = self._open.get(pack)
        if zf is None:
            zf = self._open[pack] = zipfile.ZipFile(self.data_dir / pack)
        return zf.read(member)

    def close(self) -> None:
        """Close open pack handles."""
        for zf in self._open.values():
            zf.close()
        self._open.clear()


def write_packs(items: Iterable[tuple[str, str, bytes]], out_dir: Path, prefix: str,
                pack_size: int = PACK_SIZE) -> dict[str, str]:
    """Write (sha256, ext, bytes) items into new packs `<prefix>-NNN.zip` in out_dir.

    Each pack is written to a temporary name and renamed when complete, so a killed writer
    never leaves a half pack under a real name. Returns sha256 -> "frames/packs/<pack>/<member>".
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    zf, n, k, tmp = None, 0, 0, None
    try:
        for sha, ext, data in items:
            if zf is None or n >= pack_size:
                if zf is not None:
                    zf.close()
                    os.replace(tmp, tmp.with_suffix(""))
                tmp = out_dir / f"{prefix}-{k:03d}.zip.partial"
                zf, n, k = zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED), 0, k + 1
            member = f"{sha}.{ext}"
            zf.writestr(zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0)), data)
            paths[sha] = f"{PACK_DIR}/{tmp.with_suffix('').name}/{member}"
            n += 1
    finally:
        if zf is not None:
            zf.close()
            os.replace(tmp, tmp.with_suffix(""))
    return paths
