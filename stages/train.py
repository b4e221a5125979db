"""DVC stage `train@VARIANT` (see dvc.yaml). Run: python -m stages.train VARIANT"""

import sys

from pipeline.steps import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("train", sys.argv[1:]))
