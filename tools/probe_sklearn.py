#!/usr/bin/env python3
"""Linear-probe baseline for teachcam embeddings with scikit-learn (owns the sklearn reference accuracy).

    python tools/probe_sklearn.py TRAIN.tce VAL.tce [--json]
    python tools/probe_sklearn.py CACHE.tce [--json]      # one cache with train/val splits

Reads embedding caches written by `teachcam embed`, L2-normalises every
embedding, picks C for LogisticRegression(lbfgs, max_iter=2000) by 5-fold
stratified CV on train over C in [0.1, 0.3, 1, 3, 10], refits on all of train
and prints the accuracy on val.  The Rust softmax head can be compared to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tce import TceError, read_tce, select_split  # noqa: E402

C_GRID = [0.1, 0.3, 1.0, 3.0, 10.0]
FOLDS = 5


def l2n(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description="sklearn logistic-regression probe on .tce embeddings")
    ap.add_argument("train", type=Path)
    ap.add_argument("val", type=Path, nargs="?", help="omit when TRAIN holds both splits")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args()
    try:
        if args.val is None:
            both = read_tce(args.train)
            tr, va = select_split(both, "train"), select_split(both, "val")
        else:
            tr, va = read_tce(args.train), read_tce(args.val)
    except (OSError, TceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if tr.embeddings.shape[1] != va.embeddings.shape[1]:
        print("error: train and val have different embedding dims", file=sys.stderr)
        return 2
    if tr.classes != va.classes:
        print(f"error: class lists differ: {tr.classes} vs {va.classes}", file=sys.stderr)
        return 2
    if tr.backbone_sha256 != va.backbone_sha256 or tr.precision != va.precision:
        print("error: train and val were embedded with different backbones/precisions", file=sys.stderr)
        return 2
    present = np.unique(tr.labels)
    if len(present) < 2:
        print("error: train needs at least two classes", file=sys.stderr)
        return 2
    folds = min(FOLDS, int(np.bincount(tr.labels)[present].min()))
    if folds < 2:
        print("error: every train class needs at least 2 examples for CV", file=sys.stderr)
        return 2

    xtr, xva = l2n(tr.embeddings), l2n(va.embeddings)
    search = GridSearchCV(
        LogisticRegression(solver="lbfgs", max_iter=2000),
        {"C": C_GRID},
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=0),
        scoring="accuracy",
    )
    search.fit(xtr, tr.labels)
    pred = search.best_estimator_.predict(xva)
    acc = float((pred == va.labels).mean()) if len(va.labels) else float("nan")
    per_class = {
        c: float((pred[va.labels == i] == i).mean()) for i, c in enumerate(va.classes) if np.any(va.labels == i)
    }
    result = {
        "val_accuracy": acc,
        "best_C": float(search.best_params_["C"]),
        "cv_accuracy": float(search.best_score_),
        "cv_folds": folds,
        "n_train": int(len(tr.labels)),
        "n_val": int(len(va.labels)),
        "classes": va.classes,
        "per_class_val_accuracy": per_class,
        "precision": tr.precision,
        "backbone_sha256": tr.backbone_sha256,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"train {result['n_train']}  val {result['n_val']}  classes {len(va.classes)}  "
              f"precision {tr.precision or '?'}")
        print(f"best C {result['best_C']:g}  ({folds}-fold CV accuracy {result['cv_accuracy']:.4f})")
        print(f"val accuracy {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
