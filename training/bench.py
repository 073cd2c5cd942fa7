"""``make bench-train``: fit time and peak memory by data size, and quality against popularity and ALS.

Each size is fitted in its own subprocess so its peak resident memory is its own. Quality rows share one split
of one generated data set, then of each real data set (``training.realdata``: MovieLens 100k from a PyPI wheel,
read through ``training.readers``). Figures and ratios only — nothing here passes or fails on absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = (250_000, 1_000_000, 4_000_000)
USERS_PER_INTERACTION = 1 / 50  # 50 listens per user on average; the catalog stays at 50k tracks
N_ITEMS = 50_000
REAL = ("ml-100k",)  # training.realdata.DATASETS: fetched from a package registry, never committed


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _data(n_interactions: int, seed: int = 7):
    from timbral.interactions import Interactions
    from training.generate import generate_listens

    frames = list(generate_listens(max(10, int(n_interactions * USERS_PER_INTERACTION)), N_ITEMS, n_interactions, seed))
    import pandas as pd

    f = pd.concat(frames, ignore_index=True)
    return Interactions.from_arrays(f["user_id"].astype(str).to_numpy(), f["item_id"].astype(str).to_numpy(),
                                    f["value"].to_numpy(), f["timestamp"].to_numpy())


def child_fit(n_interactions: int) -> dict:
    from timbral.nmf import NMFRecommender

    data = _data(n_interactions)
    before = _rss_mb()
    started = time.perf_counter()
    model = NMFRecommender(n_components=64).fit(data)  # timing rows at 64 components, as specified
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"interactions": n_interactions, "nnz": data.nnz, "users": data.n_users, "items": data.n_items,
            "fit_seconds": seconds, "iterations": model.report.n_iter, "rss_before_fit_mb": before, "peak_rss_mb": peak}


# What implicit's ALS is given, as its confidence (c = 1 + value on each listen, 1 elsewhere). The peer's score
# is its best row: ALS lives on its confidence weights, and which weighting wins depends on the data.
ALS_INPUTS = (
    ("implicit ALS, bm25 weights", "bm25"),
    ("implicit ALS, raw values", "raw"),
    ("implicit ALS, binary (NMF's default input)", "binary"),
    ("implicit ALS, idf of the item per listen", "idf"),
)


def als_input(scheme: str, matrix):
    """The user × item matrix ALS fits for ``scheme``: one of our weightings, or ``idf`` (each listen weighted by
    its item's bm25 idf, play counts ignored)."""
    from timbral.confidence import listen_confidence
    from timbral.weighting import Weighting

    if scheme != "idf":
        return Weighting(scheme).fit(matrix).transform(matrix)
    weighted = Weighting("binary").fit(matrix).transform(matrix)
    weighted.data = listen_confidence(weighted, Weighting("bm25").fit(matrix).idf, 1.0)  # the refinement's own
    return weighted


def nmf_variant(text: str) -> dict:
    """``"confidence_shift=0.3,confidence_sweeps=20"`` → NMFParams overrides, each value typed as its default is
    (where the default is a word, such as ``auto`` or ``binary``, a number still reads as a number). An unknown
    knob, a value of the wrong type or one the model refuses is a ValueError naming the knob."""
    from dataclasses import fields

    from timbral.params import NMFParams

    defaults = NMFParams()
    known = {f.name for f in fields(NMFParams)}
    overrides = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"--nmf {part!r}: expected KNOB=VALUE with KNOB one of {', '.join(sorted(known))}")
        default, raw = getattr(defaults, key), raw.strip()
        if isinstance(default, str):  # a name (weighting, init, …), or a number where "auto"/"same" is the default
            try:
                overrides[key] = float(raw)
            except ValueError:
                overrides[key] = raw
            continue
        try:
            overrides[key] = type(default)(raw)
        except ValueError:
            raise ValueError(f"--nmf {part!r}: {key} takes a {type(default).__name__}") from None
    if not overrides:
        raise ValueError(f"--nmf {text!r}: no KNOB=VALUE given")
    NMFParams(**overrides).validate()  # the model's own checks, with the knob named
    return overrides


def quality(data, ks=(10,), variants=()) -> list[dict]:
    """Default NMF, popularity and implicit's ALS on one temporal per-user split of ``data`` (all test users);
    each of ``variants`` (NMFParams overrides) adds an NMF row after the defaults' on the same split."""
    import implicit
    import scipy.sparse as sp

    from timbral.metrics import ndcg_at_k
    from timbral.nmf import NMFRecommender
    from timbral.params import DegenerateFit, NMFParams
    from training.evaluate import evaluate
    from training.split import split_per_user

    split = split_per_user(data, 0.2, 42)
    rows = []
    started = time.perf_counter()
    nmf = NMFRecommender().fit(split.train)
    nmf_seconds = time.perf_counter() - started
    result = evaluate(nmf, split, ks, max_users=None)
    defaults = NMFParams()
    rows.append({"model": f"NMF, defaults ({defaults.n_components} components, {defaults.weighting}, alpha_W "
                          f"{defaults.alpha_W:g}, {defaults.confidence} confidence, shift {defaults.confidence_shift:g}, "
                          f"{defaults.confidence_sweeps} sweeps)",
                 "ndcg_at_10": result.model["ndcg_at_10"], "fit_seconds": nmf_seconds})
    for overrides in variants:
        label = "NMF, defaults but " + ", ".join(f"{k} {v}" for k, v in overrides.items())
        started = time.perf_counter()
        try:
            model = NMFRecommender(NMFParams(**overrides)).fit(split.train)
        except DegenerateFit as exc:  # a setting this data cannot take: say so in its row, keep the bench going
            model, label, score = None, f"{label} (failed: {exc})", float("nan")
        seconds = time.perf_counter() - started  # the fit alone, as for the defaults' row
        if model is not None:
            score = evaluate(model, split, ks, max_users=None).model["ndcg_at_10"]
        rows.append({"model": label, "ndcg_at_10": score, "fit_seconds": seconds})
    rows.append({"model": "popularity", "ndcg_at_10": result.baseline["baseline_ndcg_at_10"], "fit_seconds": 0.0})
    users = split.test_users
    relevant = split.relevant(users)
    for label, scheme in ALS_INPUTS:
        weighted = als_input(scheme, split.train.matrix)
        als = implicit.cpu.als.AlternatingLeastSquares(factors=64, iterations=15, random_state=0)
        started = time.perf_counter()
        als.fit(sp.csr_matrix(weighted), show_progress=False)
        seconds = time.perf_counter() - started
        recs = np.vstack([als.recommend(users[i:i + 1024], weighted[users[i:i + 1024]], N=10)[0]
                          for i in range(0, users.size, 1024)])
        rows.append({"model": label, "ndcg_at_10": ndcg_at_k(recs, relevant, 10), "fit_seconds": seconds})
    for row in rows:
        row["implicit_version"] = implicit.__version__
        row["test_users"] = int(users.size)
        row["split"] = split.strategy
    return rows


def print_quality(rows: list[dict]) -> None:
    """The table, then the issue's targets: NMF >= the better ALS row and >= 1.5x popularity."""
    print("| model | nDCG@10 | fit s | vs popularity |")
    print("|---|---:|---:|---:|")
    pop = next(r["ndcg_at_10"] for r in rows if r["model"] == "popularity")
    for r in rows:
        print(f"| {r['model']} | {r['ndcg_at_10']:.4f} | {r['fit_seconds']:.1f} | {r['ndcg_at_10'] / pop:.2f}× |")
    nmf = rows[0]["ndcg_at_10"]
    als = max(r["ndcg_at_10"] for r in rows if r["model"].startswith("implicit ALS"))
    print(f"\nTargets: NMF ≥ best ALS {'met' if nmf >= als else 'MISSED'} ({nmf:.4f} vs {als:.4f}); "
          f"NMF ≥ 1.5× popularity {'met' if nmf >= 1.5 * pop else 'MISSED'} ({nmf / pop:.2f}×).")


def read_file(path):
    """(interactions, detected format) of a data file, through our own reader and validation."""
    from training.readers import read_interactions
    from training.validate import to_interactions

    raw = read_interactions(path)
    return to_interactions(raw), raw.fmt


def real_data(name: str):
    """(interactions, how they were got) for a real data set."""
    from training.realdata import DATASETS, fetch

    path = fetch(name)
    data, fmt = read_file(path)
    return data, f"{DATASETS[name].origin}; read as `{fmt}` from {path}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child-fit", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--quality-size", type=int, default=1_000_000)
    ap.add_argument("--real", default=",".join(REAL), help="real data sets for the quality table ('' for none)")
    ap.add_argument("--data", action="append", default=[], metavar="FILE",
                    help="also a file of yours (any format `timbral train --data` reads, e.g. Last.fm's "
                         "user_artists.dat): the same quality table; repeatable")
    ap.add_argument("--nmf", action="append", default=[], metavar="KNOB=VALUE[,KNOB=VALUE]",
                    help="also NMF with these knobs changed from the defaults (NMFParams names, e.g. "
                         "confidence_shift=0.3,confidence_sweeps=20), a row beside the defaults in every quality "
                         "table; repeatable")
    args = ap.parse_args(argv)
    try:
        variants = [nmf_variant(text) for text in args.nmf]
    except ValueError as exc:
        ap.error(str(exc))
    if args.child_fit:
        print(json.dumps(child_fit(args.child_fit)))
        return
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    print(f"# bench-train — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, OPENBLAS_NUM_THREADS={threads}")
    print("\n## Fit time and peak memory (NMF defaults, 64 components as specified)\n")
    print("| interactions | users × items (nnz) | fit s | iterations | peak RSS MB | fit-time ratio to previous |")
    print("|---:|---|---:|---:|---:|---:|")
    prev = prev_size = None
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, "-m", "training.bench", "--child-fit", str(size)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = f"{r['fit_seconds'] / prev:.2f}× (size ×{size / prev_size:.0f})" if prev else "-"
        print(f"| {size:,} | {r['users']:,} × {r['items']:,} ({r['nnz']:,}) | {r['fit_seconds']:.1f} | "
              f"{r['iterations']} | {r['peak_rss_mb']:.0f} | {ratio} |", flush=True)
        prev, prev_size = r["fit_seconds"], size
    print(f"\n## Quality on one temporal split ({args.quality_size:,} generated interactions, all test users)\n")
    rows = quality(_data(args.quality_size), variants=variants)
    print_quality(rows)
    for name in filter(None, args.real.split(",")):
        from training.realdata import DATASETS, RealDataError

        print(f"\n## Quality on {DATASETS[name].title}, the same split and models\n")
        try:
            data, origin = real_data(name)
        except RealDataError as exc:
            print(f"Not available: {exc}")
            continue
        print(f"Source: {origin}.\n{data.n_users:,} users × {data.n_items:,} items, {data.nnz:,} interactions.\n")
        print_quality(quality(data, variants=variants))
    for path in args.data:
        data, fmt = read_file(path)
        print(f"\n## Quality on {path} (read as `{fmt}`), the same models\n")
        print(f"{data.n_users:,} users × {data.n_items:,} items, {data.nnz:,} interactions.\n")
        rows_file = quality(data, variants=variants)
        print(f"Split: {rows_file[0]['split']} (20 % of each user's items held out).\n")
        print_quality(rows_file)
    print(f"\nimplicit {rows[0]['implicit_version']}; ALS at 64 factors, 15 iterations, default regularisation.")


if __name__ == "__main__":
    main()
