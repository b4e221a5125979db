"""DVC stage `eval@VARIANT` (see dvc.yaml). Run: python -m stages.eval VARIANT"""

import sys

from pipeline.steps import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("eval", sys.argv[1:]))
