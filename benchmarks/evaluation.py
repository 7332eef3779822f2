"""Evaluation's embedding cost on a trained run: the full target-tower forward against the
end-only one evaluate_run uses (the last block at the pooled token only), for every
(setting, trained method, language, variant) of the run, timed alternately in one process.
Also how far the two paths' metrics are apart (they agree up to float rounding).

    python benchmarks/evaluation.py reports/<run_id>            # a finished run (e.g. make demo's)
    python benchmarks/evaluation.py reports/<run_id> --threads 2

Prints a table per method, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from dasd_lib.config import load_params
from dasd_lib.context import Run
from dasd_lib.evaluate import embed_target, kfold_for, score_captions, unique_images
from dasd_lib.features import frozen_features
from dasd_lib.model import METHODS
from dasd_lib.pipeline import load_trained_model

METRICS = ["i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "SumR"]


def measure(run_dir: str) -> dict:
    params = load_params(f"{run_dir}/params.yaml")
    run = Run(params, run_dir)
    test = run.test_table()
    image_ids = unique_images(test).image_id.tolist()
    seconds = {"full": 0.0, "end_only": 0.0}
    rows, worst, n_captions = [], 0.0, 0
    for setting in params.run.settings:
        backbone = run.backbone(setting)
        feats = frozen_features(backbone, test, image_size=params.data.image_size,
                                cache_dir=run.cache_dir, device=torch.device("cpu"))
        image_emb = feats.images(image_ids).numpy()
        for method in params.run.methods.get(setting, []):
            if METHODS[method].oracle:
                continue
            model = load_trained_model(run, setting, method, params.run.seeds[0])
            per_method = {"full": 0.0, "end_only": 0.0}
            for lang in params.data.langs:
                for variant in params.run.eval_variants:
                    caps = test[(test.lang == lang) & (test.variant == variant)]
                    if caps.empty:
                        continue
                    tokens = backbone.tokenize_target(caps.caption.tolist())
                    metrics = {}
                    for mode in ("full", "end_only"):
                        t0 = time.perf_counter()
                        emb = embed_target(model, backbone, caps.caption.tolist(), lang, tokens=tokens,
                                           batch_size=params.run.eval_batch_size,
                                           end_only=mode == "end_only")
                        per_method[mode] += time.perf_counter() - t0
                        metrics[mode] = score_captions(emb.r_T, caps, image_ids, image_emb,
                                                       kfold_for(params, lang), params.run.i2t_protocol)
                    worst = max(worst, *(abs(metrics["full"][k] - metrics["end_only"][k]) for k in METRICS))
                    n_captions += len(caps)
            rows.append((setting, method, per_method["full"], per_method["end_only"]))
            for mode in seconds:
                seconds[mode] += per_method[mode]
    print(f"{'setting':<10} {'method':<14} {'full s':>8} {'end-only s':>11} {'ratio':>6}")
    for setting, method, full, fast in rows:
        print(f"{setting:<10} {method:<14} {full:8.1f} {fast:11.1f} {full / fast:6.2f}")
    return {"run_dir": run_dir, "threads": torch.get_num_threads(), "captions": n_captions,
            "full_s": round(seconds["full"], 2), "end_only_s": round(seconds["end_only"], 2),
            "ratio": round(seconds["full"] / seconds["end_only"], 3),
            "max_abs_metric_difference": worst}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
