"""Draw the web app's icons (daemons/sudo_api/static/icon-*.png) with Pillow; the PNGs are
committed, so this runs only when the icon changes: `python tools/draw_icons.py`.

The icon is the brand's blue with a white speech bubble holding three dots (the assistant
writing). The maskable one keeps the drawing inside the middle 80% (the safe zone a platform's
mask never cuts) on a full-bleed background; the others are rounded squares.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

STATIC = Path(__file__).resolve().parent.parent / "daemons" / "sudo_api" / "static"
BLUE = (53, 89, 224, 255)  # --accent in sudo.css
WHITE = (255, 255, 255, 255)
SCALE = 4
"""Drawn this many times larger, then scaled down: smooth edges."""


def draw(size: int, maskable: bool) -> Image.Image:
    big = size * SCALE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    if maskable:
        pen.rectangle((0, 0, big, big), fill=BLUE)
        inset = big * 0.2  # the bubble within the safe zone
    else:
        pen.rounded_rectangle((0, 0, big - 1, big - 1), radius=big * 0.22, fill=BLUE)
        inset = big * 0.14
    left, top, right = inset, inset + big * 0.04, big - inset
    bottom = big - inset - big * 0.12
    pen.rounded_rectangle((left, top, right, bottom), radius=(bottom - top) * 0.3, fill=WHITE)
    tail = big * 0.1  # the bubble's tail, down and to the left
    pen.polygon(
        [(left + tail, bottom - 1), (left + tail * 2.2, bottom - 1), (left + tail * 0.6, bottom + tail)],
        fill=WHITE,
    )
    middle, radius = (top + bottom) / 2, big * 0.055
    for i in (-1, 0, 1):
        x = big / 2 + i * radius * 3.2
        pen.ellipse((x - radius, middle - radius, x + radius, middle + radius), fill=BLUE)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    for name, size, maskable in (
        ("icon-192.png", 192, False),
        ("icon-512.png", 512, False),
        ("icon-maskable-512.png", 512, True),
    ):
        # No metadata that changes between runs: the same drawing gives the same bytes.
        draw(size, maskable).save(STATIC / name, optimize=True)
        print(STATIC / name)


if __name__ == "__main__":
    main()
