"""DVC stage `download` (see dvc.yaml). Run: python -m stages.download"""

import sys

from pipeline.steps import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("download", sys.argv[1:]))
