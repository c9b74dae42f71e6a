"""Seeded synthetic detection data: `python tools/synth.py --out DIR --split train|val --seed S`.

The generator lives in the package (edgekit.validate.synth) so an installed wheel can build the
validation split too; this script is the command-line entry point the docs and issues name.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from edgekit.validate.synth import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
