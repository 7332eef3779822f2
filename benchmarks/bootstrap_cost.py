"""What the paired bootstrap adds to evaluation at the default run's size.

params/default.yaml scores 6 methods (finetune: floor, full_distill, static, dasd;
zero-shot: static, dasd; the oracle is no baseline) x 5 target languages x 2 test variants
on 1,000 test images with 5 captions each, with run.bootstrap_samples = 1000. Random
similarity matrices of that size stand in for the embeddings (the cost does not depend on
the values). Timed: the per-image hit counts on top of the ranks evaluation computes
anyway, and evaluate.compare_methods (bootstrap weights, one matmul, intervals, table).
Prints a summary, then one JSON line.

    .venv/bin/python benchmarks/bootstrap_cost.py [--images 1000] [--boot 1000]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dasd_lib.evaluate import compare_methods  # noqa: E402
from dasd_lib.metrics import kfold_ranks, per_image_hits  # noqa: E402

METHODS = {"finetune": ["floor", "full_distill", "static", "dasd"], "zeroshot": ["static", "dasd"]}
LANGS = ["de", "fr", "cs", "ja", "zh"]
VARIANTS = ["native", "mt_clean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    caption_image = np.repeat(np.arange(args.images), args.captions)
    keys = [{"setting": s, "method": m, "seed": 0, "lang": lang, "variant": v}
            for s, methods in METHODS.items() for m in methods for lang in LANGS for v in VARIANTS]
    ranks_s = hits_s = 0.0
    hits = []
    for _ in keys:
        sim = rng.normal(size=(len(caption_image), args.images)).astype(np.float32)
        t0 = time.perf_counter()
        ranks = kfold_ranks(sim, caption_image, 0)  # evaluation computes these anyway
        t1 = time.perf_counter()
        hits.append(per_image_hits(*ranks[:2], caption_image, ranks[2]))  # added
        t2 = time.perf_counter()
        ranks_s += t1 - t0
        hits_s += t2 - t1
    t0 = time.perf_counter()
    table = compare_methods(pd.DataFrame(keys), hits, n_boot=args.boot, seed=0)
    compare_s = time.perf_counter() - t0
    added = hits_s + compare_s
    print(f"{len(keys)} scored sets, {args.images} images x {args.captions} captions, "
          f"B = {args.boot}: ranks (not added) {ranks_s:.2f} s; per-image hits {hits_s:.3f} s; "
          f"compare_methods {compare_s:.3f} s ({len(table)} rows); added by the bootstrap: "
          f"{added:.2f} s")
    print(json.dumps({"scored_sets": len(keys), "images": args.images, "n_boot": args.boot,
                      "ranks_s": round(ranks_s, 3), "hits_s": round(hits_s, 3),
                      "compare_methods_s": round(compare_s, 3), "added_s": round(added, 3),
                      "comparison_rows": len(table)}))


if __name__ == "__main__":
    main()
