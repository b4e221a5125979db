"""One-call GPU measurement of the LRT pipeline: speed, memory and a small quality experiment.

Run as `bash bench/gpu.sh` on the device (or `python -m pipeline.benchmarks.gpu --out DIR`).
The parent process imports no torch: it runs each section in a worker subprocess (its own
process group) with a timeout, merges what the worker wrote, and rewrites `results.json` after
every section, so a slow compile or a crash costs one section, never the file. A global
wall-clock budget is checked before each section; sections that no longer fit are skipped.

Sections, in order of value (issue 16: the faithful backbone's first device run). Models:
nanochat's d12 backbone (`LRTConfig` defaults: SSSL windows, value embeddings, lambdas; vocab
32768, T 2048) as the baseline, with our shared pathway ("lrt") and the authors' arm
(pathway official); the optimizer is nanochat's (`lrt.optim.OptimizerRecipe`).
  env        torch / device / flash-attention check, a big bf16 GEMM, the MFU peak used
  decode     greedy decoding tok/s, baseline vs LRT vs official, batch 1 and 32, per decoder:
             eager (growing KV cache, autocast, as run 1), eager_bf16 (the same on a bf16 copy,
             no autocast: the reference for the rest), graph (static cache, stacked matmuls,
             replayed as a CUDA graph) and compiled_graph (inductor + CUDA graph); see
             lrt/static_decode.py
  train_compiled  d12, the whole loss compiled (every pass, head and cross-entropy in one
             `torch.compile`, as training's `compile: true` does): baseline at batch 8 and 32,
             interleaved S=2 (shared, then official), multi_refine K=1; step ms with the
             optimizer timed apart, peak memory, MFU against the stated peak
  quality    small models on the packed Gutenberg shards (.gpu_data): per seed (two), baseline
             and LRT (shared, interleaved S=2) at equal tokens and the baseline at matched
             compute; validation BPB in init / merged / sequential modes; 150 s kept for it
  train_eager  the same models eager: baseline, interleaved S=2 (shared, official),
             multi_refine K=1, the LRT model with strategy none, baseline again
  loader     loader and host-to-device time per batch
  pytest     the CUDA-marked tests (CUDA-graph decoding, fused optimizer, bf16 passes)

Needs torch, numpy, `lrt/` and `pipeline/_rust.abi3.so` (loader); no pydantic / mlflow.
`--smoke` runs every section with tiny sizes on CPU.

Modules: `config` (sizes, models, strategies), `parent` (the command line, sections, timeouts),
`summary` (summary.txt), `worker` (dispatch) and one per section: `checks` (env, pytest),
`decode`, `train` (train_compiled, train_eager), `loader`, `quality`; `part` is a worker's
results file.
"""

from pipeline.benchmarks.gpu.parent import main

__all__ = ["main"]
