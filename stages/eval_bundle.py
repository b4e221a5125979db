"""DVC stage `eval_bundle` (see dvc.yaml): nanochat's CORE eval bundle into data/eval_bundle.
Run: python -m stages.eval_bundle"""

import sys

from pipeline.steps import stage_main

if __name__ == "__main__":
    sys.exit(stage_main("eval_bundle", sys.argv[1:]))
