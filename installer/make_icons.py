"""Render resources/transferstudio.svg into the icon files installers need.

    python installer/make_icons.py OUT_DIR

writes PNGs (16 to 512 px, for Linux icon themes), ``transferstudio.ico`` (Windows) and
``transferstudio.icns`` (macOS). The SVG is the only source: rendered with Qt's SVG renderer
(already a dependency), packed with Pillow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVG = ROOT / "resources" / "transferstudio.svg"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def render(out_dir: Path) -> list[Path]:
    """Write the PNGs, ICO and ICNS into ``out_dir``; returns the files written."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise SystemExit(f"{SVG}: not a valid SVG")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter)
        painter.end()
        path = out_dir / f"transferstudio-{size}.png"
        if not image.save(str(path)):
            raise SystemExit(f"could not write {path}")
        written.append(path)
    largest = Image.open(out_dir / "transferstudio-512.png")
    ico = out_dir / "transferstudio.ico"
    largest.save(ico, sizes=[(s, s) for s in SIZES if s <= 256])
    icns = out_dir / "transferstudio.icns"
    largest.save(icns)
    return [*written, ico, icns]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    for path in render(Path(sys.argv[1])):
        print(path)
