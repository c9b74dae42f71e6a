"""Write the demo's bundled images (edgekit/zoo/images/) reproducibly.

Four synthetic scenes from a split/seed the fixtures never trained or validated on
(split "val", seed 1), at 224x224 so the 160x160 models exercise the letterbox path.

    python tools/make_demo_images.py
"""

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.validate import synth  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "edgekit" / "zoo" / "images"

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        folder = synth.generate(Path(tmp) / "demo", "val", 1, num_images=4, image_size=224, progress=False)
        OUT.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(sorted((Path(folder) / "images").glob("*"))):
            shutil.copyfile(image, OUT / f"scene{index}{image.suffix}")
    print(f"wrote {len(list(OUT.iterdir()))} images to {OUT}")
