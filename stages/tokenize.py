"""DVC stage `tokenize` (see dvc.yaml). Run: python -m stages.tokenize"""

import sys

from pipeline.steps import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("tokenize", sys.argv[1:]))
