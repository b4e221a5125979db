"""DVC stage `report` (see dvc.yaml). Run: python -m stages.report"""

import sys

from pipeline.steps import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("report", sys.argv[1:]))
