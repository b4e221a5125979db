"""Training: the loop and its run state, device and distributed set-up, logs, checkpoints
(`checkpoint`), the torchrun relaunch (`launch`) and nanochat checkpoint import/export
(`nanochat_io`). Reads `pipeline.data` and `pipeline.config`, writes through `pipeline.atomic`
and `pipeline.tracking`, and runs its periodic validation with `pipeline.evaluation.periodic`
(docs/LAYOUT.md).
"""
