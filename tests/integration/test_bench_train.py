"""``make bench-train`` end to end on small sizes, with a file of the user's own (``--data``)."""

from __future__ import annotations

import numpy as np

from training.bench import main


def test_bench_train_prints_every_table_including_a_users_own_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["userID\tartistID\tweight"]  # Last.fm 2k's layout, read through our reader
    for user in range(1, 121):
        taste = rng.integers(0, 4)
        for artist in rng.choice(np.arange(taste * 30, taste * 30 + 30), size=12, replace=False):
            rows.append(f"{user}\t{artist}\t{int(rng.integers(1, 500))}")
    path = tmp_path / "user_artists.dat"
    path.write_text("\n".join(rows) + "\n")
    main(["--sizes", "3000", "--quality-size", "20000", "--real", "", "--data", str(path),
          "--nmf", "confidence_shift=0,confidence_sweeps=4"])
    out = capsys.readouterr().out
    assert "| 3,000 |" in out and "## Quality on one temporal split (20,000 generated" in out
    assert f"## Quality on {path} (read as `lastfm-2k`)" in out
    assert "120 users × 120 items, 1,440 interactions." in out and "Split: random" in out
    assert out.count("| NMF, defaults (64 components, binary, alpha_W 0.001, idf confidence, shift 0.3, 20 sweeps) |") == 2 and out.count("Targets: NMF") == 2
    assert out.count("| implicit ALS, idf of the item per listen |") == 2
    # the --nmf variant: a row of its own beside the defaults in both quality tables
    assert out.count("| NMF, defaults but confidence_shift 0.0, confidence_sweeps 4 |") == 2


def test_nmf_variants_are_typed_like_the_defaults_and_refused_with_the_knob_named():
    import pytest

    from training.bench import nmf_variant

    assert nmf_variant("confidence_shift=0.3, confidence_sweeps=20") == {"confidence_shift": 0.3,
                                                                        "confidence_sweeps": 20}
    assert nmf_variant("confidence_reg=30,weighting=bm25,alpha_H=same") == {"confidence_reg": 30.0,
                                                                           "weighting": "bm25", "alpha_H": "same"}
    for text, message in [("no_such_knob=1", "KNOB one of"), ("n_components", "KNOB=VALUE"),
                          ("n_components=many", "n_components takes a int"), ("", "no KNOB=VALUE"),
                          ("confidence_shift=-1", "confidence_shift must be a finite number >= 0"),
                          ("weighting=tfidf", "weighting")]:
        with pytest.raises(ValueError, match=message):
            nmf_variant(text)


def test_als_idf_input_weights_each_listen_by_its_items_idf_and_ignores_play_counts():
    import scipy.sparse as sp

    from timbral.weighting import Weighting
    from training.bench import als_input

    counts = sp.csr_matrix(np.array([[5, 0, 1], [200, 3, 0], [1, 0, 0], [0, 0, 7]], dtype=np.float32))
    idf = Weighting("bm25").fit(counts).idf
    got = als_input("idf", counts)
    assert np.array_equal(got.toarray(), (counts.toarray() > 0) * idf[None, :])
    assert idf[0] < idf[1]  # the item three users played weighs less than the one only one did
    assert np.array_equal(als_input("binary", counts).toarray(), (counts.toarray() > 0).astype(np.float32))


def test_a_variant_the_data_cannot_take_is_a_failed_row_and_the_bench_goes_on():
    import math

    from training.bench import _data, quality

    rows = quality(_data(20_000), variants=[{"confidence_reg": 1e12}, {"confidence_sweeps": 2}])
    failed, fine = rows[1], rows[2]
    assert failed["model"].startswith("NMF, defaults but confidence_reg 1000000000000.0 (failed: ")
    assert "lower confidence_reg" in failed["model"] and math.isnan(failed["ndcg_at_10"])
    assert fine["model"] == "NMF, defaults but confidence_sweeps 2" and fine["ndcg_at_10"] > 0
    assert any(r["model"].startswith("implicit ALS") for r in rows)  # the rest of the table still ran
