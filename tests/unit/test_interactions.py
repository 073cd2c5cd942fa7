"""Interactions: id canonicalisation and kinds, the id maps, combining duplicates, filtering, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from timbral.interactions import IdMap, InteractionError, Interactions, canonical_id, canonical_ids, id_kind


# ----------------------------------------------------------------------------- canonical ids
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        ("42", "42"),
        (" 42 ", "42"),
        (42.0, "42"),
        (np.int64(42), "42"),
        (np.uint8(42), "42"),
        (np.float32(42.0), "42"),
        (-7, "-7"),
        (-0.0, "0"),
        (10**20, "100000000000000000000"),
        ("007", "007"),  # a string keeps its leading zeros
        ("abc", "abc"),
        (np.str_(" x "), "x"),
    ],
)
def test_canonical_id(value, expected):
    assert canonical_id(value) == expected


def test_int_and_str_of_the_same_id_are_the_same_id():
    assert canonical_id(42) == canonical_id("42") == canonical_id(42.0)
    assert canonical_id("042") != canonical_id(42)


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_booleans_are_rejected(value):
    with pytest.raises(InteractionError, match="boolean"):
        canonical_id(value)


@pytest.mark.parametrize("value", [1.5, -0.25, float("nan"), float("inf"), np.float64(2.5)])
def test_non_integral_floats_are_rejected(value):
    with pytest.raises(InteractionError, match="not an integer or a string"):
        canonical_id(value)


def test_canonical_ids_matches_canonical_id_elementwise():
    cases = [
        [42, 7, -3],
        [42.0, 7.0, -0.0],
        ["42", " a ", "007"],
        np.array([42, "x", 7.0, np.int32(5)], dtype=object),
        np.array([1e20, 3.0]),  # beyond int64: the exact (slow) path
        np.array([3, 4], dtype=np.uint64),
    ]
    for values in cases:
        got = canonical_ids(values)
        assert got.dtype.kind == "U"
        assert got.tolist() == [canonical_id(v) for v in np.asarray(values).tolist()]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([True, False], "boolean"),
        (np.array([1, True], dtype=object), "row 1"),
        ([1.0, 2.5], "row 1"),
        ([1.0, np.nan], "row 1"),
    ],
)
def test_canonical_ids_rejects_with_the_row(values, message):
    with pytest.raises(InteractionError, match=message):
        canonical_ids(values, "users")


# ----------------------------------------------------------------------------- id kinds
@pytest.mark.parametrize(
    ("ids", "kind"),
    [
        (["1", "2", "30"], "int"),
        (["-5", "0", "17"], "int"),
        (["1", "02"], "str"),  # leading zero: "02" would not survive int()
        (["007"], "str"),
        (["-0"], "str"),  # int("-0") prints as "0"
        (["1", "a"], "str"),
        (["1.5"], "str"),
        (["+5"], "str"),
        (["\u00b2"], "str"),  # superscript two: str.isdigit() is True but int() fails
        (["\u0663"], "str"),  # Arabic-Indic three: int() gives 3, which prints differently
        (["1 2"], "str"),
        (["-"], "str"),
        ([], "str"),
    ],
)
def test_id_kind(ids, kind):
    assert id_kind(np.array(ids, dtype=str)) == kind


# ----------------------------------------------------------------------------- IdMap
def test_idmap_round_trip_in_the_original_type():
    ints = IdMap(np.array(["10", "3", "7"]), "int")
    assert len(ints) == 3
    for i, external in enumerate([10, 3, 7]):
        assert ints.index(external) == i
        assert ints.index(str(external)) == i
        assert ints.external(i) == external
        assert type(ints.external(i)) is int
    assert ints.externals([2, 0]) == [7, 10]
    assert all(type(x) is int for x in ints.externals([2, 0]))
    np.testing.assert_array_equal(ints.indices([7, "10", 7.0, 99]), [2, 0, 2, -1])

    strs = IdMap(np.array(["007", "b"]), "str")
    assert strs.external(0) == "007"
    assert type(strs.external(0)) is str
    assert strs.externals([1, 0]) == ["b", "007"]
    assert strs.index(7) == -1  # 7 is "7", not "007"
    assert strs.index("007") == 0


def test_idmap_unknown_id_is_minus_one():
    m = IdMap(np.array(["a", "b"]))
    assert m.index("c") == -1
    assert m.index(" a ") == 0  # lookups canonicalise too
    assert m.indices([]).tolist() == []
    with pytest.raises(InteractionError):
        m.index(True)


def test_idmap_does_not_wrap_negative_indices():
    """-1 is timbral's "unknown"/padding marker; mapping it must not yield the last id."""
    m = IdMap(np.array(["a", "b", "c"]))
    with pytest.raises(IndexError):
        m.external(-1)
    with pytest.raises(IndexError):
        m.externals([0, -1])
    with pytest.raises(IndexError):
        m.external(3)
    with pytest.raises(IndexError):
        m.externals([3])
    assert m.externals([]) == []


# ----------------------------------------------------------------------------- building
def test_from_arrays_builds_the_matrix_and_maps():
    data = Interactions.from_arrays(["u2", "u1", "u1"], ["b", "a", "c"], [3.0, 1.0, 2.0])
    assert data.n_users == 2 and data.n_items == 3 and data.nnz == 3
    assert isinstance(data.matrix, sp.csr_matrix) and data.matrix.dtype == np.float32
    dense = data.matrix.toarray()
    u1, u2 = data.users.index("u1"), data.users.index("u2")
    a, b, c = (data.items.index(x) for x in "abc")
    assert dense[u1, a] == 1.0 and dense[u1, c] == 2.0 and dense[u2, b] == 3.0
    assert dense.sum() == 6.0
    assert data.timestamps is None


def test_values_default_to_one():
    data = Interactions.from_arrays(["u", "u", "v"], ["a", "b", "a"])
    np.testing.assert_array_equal(np.sort(data.matrix.data), [1.0, 1.0, 1.0])


def test_integer_ids_are_canonicalised_and_answered_as_int():
    data = Interactions.from_arrays([42.0, 42.0, 7.0], np.array([5, 5, 6]), [1, 2, 3])
    assert data.users.kind == "int" and data.items.kind == "int"
    assert data.users.index(42) == data.users.index("42") == data.users.index(42.0) >= 0
    assert sorted(data.users.externals(range(data.n_users))) == [7, 42]
    assert data.matrix[data.users.index(42), data.items.index(5)] == 3.0  # 1 + 2


def test_leading_zeros_make_string_ids():
    data = Interactions.from_arrays(["007", "8"], ["1", "2"])
    assert data.users.kind == "str"
    assert data.items.kind == "int"
    assert sorted(data.users.externals(range(2))) == ["007", "8"]


def test_mixed_int_and_str_ids_are_one_namespace():
    data = Interactions.from_arrays(np.array([42, "42", " 42"], dtype=object), ["a", "b", "c"])
    assert data.n_users == 1 and data.nnz == 3


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([True, False], "boolean"),
        ([1.5, 2.0], "not an integer"),
    ],
)
def test_from_arrays_rejects_bad_ids(users, message):
    with pytest.raises(InteractionError, match=message):
        Interactions.from_arrays(users, ["a", "b"])


def test_duplicate_pairs_are_summed():
    data = Interactions.from_arrays(["u", "u", "u", "v"], ["a", "a", "b", "a"], [2.0, 3.5, 1.0, 4.0])
    assert data.nnz == 3
    m = data.matrix
    assert m[data.users.index("u"), data.items.index("a")] == pytest.approx(5.5)
    assert m[data.users.index("u"), data.items.index("b")] == pytest.approx(1.0)
    assert m[data.users.index("v"), data.items.index("a")] == pytest.approx(4.0)


def test_latest_timestamp_is_kept_per_pair():
    users = ["u", "u", "u", "v", "v", "u"]
    items = ["a", "a", "b", "a", "a", "a"]
    times = [100.0, 300.0, 50.0, 20.0, 10.0, 200.0]  # (u, a) at 100, 300, 200 -> 300; (v, a) -> 20
    data = Interactions.from_arrays(users, items, None, times)
    ts = data.timestamps
    assert ts is not None and ts.shape == data.matrix.shape
    assert ts[data.users.index("u"), data.items.index("a")] == 300.0
    assert ts[data.users.index("u"), data.items.index("b")] == 50.0
    assert ts[data.users.index("v"), data.items.index("a")] == 20.0
    assert data.matrix[data.users.index("u"), data.items.index("a")] == 3.0


def test_timestamps_have_the_same_sparsity_as_the_matrix_even_for_zero_values_and_times():
    data = Interactions.from_arrays(["u", "u", "v"], ["a", "b", "a"], [0.0, 1.0, 2.0], [0.0, 5.0, 0.0])
    # a zero value is still an interaction, and a zero time is still a time
    assert data.nnz == 3 and data.timestamps.nnz == 3
    m, ts = data.matrix.tocsr(), data.timestamps.tocsr()
    m.sort_indices()
    ts.sort_indices()
    np.testing.assert_array_equal(m.indptr, ts.indptr)
    np.testing.assert_array_equal(m.indices, ts.indices)


def test_zero_valued_interactions_count_for_the_minimums():
    data = Interactions.from_arrays(
        ["u", "u", "v"], ["a", "b", "a"], [0.0, 1.0, 1.0], min_item_interactions=2
    )
    assert data.items.ids.tolist() == ["a"]  # a: u (value 0) and v; b: only u
    assert data.n_users == 2


def test_min_filtering_is_iterated_to_a_fixpoint():
    # A chain: dropping item "x" (1 user) leaves user "u3" with one item, which drops "y" to one user, ...
    users = ["u1", "u1", "u2", "u2", "u1", "u2", "u3", "u3", "u4", "u4"]
    items = ["a", "b", "a", "b", "c", "c", "c", "x", "y", "x"]
    # counts: u1 {a,b,c}=3, u2 {a,b,c}=3, u3 {c,x}=2, u4 {y,x}=2; a=2, b=2, c=3, x=2, y=1
    # pass 1 (min 2 each): drop item y -> u4 {x}=1
    # pass 2: drop user u4 -> x {u3}=1
    # pass 3: drop item x -> u3 {c}=1
    # pass 4: drop user u3 -> c {u1, u2}=2: stable
    data = Interactions.from_arrays(users, items, min_user_interactions=2, min_item_interactions=2)
    assert sorted(data.users.ids.tolist()) == ["u1", "u2"]
    assert sorted(data.items.ids.tolist()) == ["a", "b", "c"]
    assert data.nnz == 6
    binary = data.matrix.copy()
    binary.data[:] = 1
    assert (np.asarray(binary.sum(axis=1)).ravel() >= 2).all()
    assert (np.asarray(binary.sum(axis=0)).ravel() >= 2).all()


def test_filtering_keeps_values_times_and_id_alignment():
    users = ["u1", "u1", "u2", "u2", "u3"]
    items = ["a", "b", "a", "b", "z"]
    vals = [1.0, 2.0, 3.0, 4.0, 9.0]
    times = [10.0, 20.0, 30.0, 40.0, 50.0]
    data = Interactions.from_arrays(users, items, vals, times, min_user_interactions=2)
    assert sorted(data.users.ids.tolist()) == ["u1", "u2"]
    assert sorted(data.items.ids.tolist()) == ["a", "b"]
    for u, i, v, t in zip(users[:4], items[:4], vals[:4], times[:4], strict=True):
        assert data.matrix[data.users.index(u), data.items.index(i)] == v
        assert data.timestamps[data.users.index(u), data.items.index(i)] == t


def test_filter_min_without_effect_returns_the_same_object():
    data = Interactions.from_arrays(["u", "v"], ["a", "a"])
    assert data.filter_min(1, 1) is data
    assert data.filter_min(1, 2) is data


def test_filtering_everything_away_raises_a_clear_error():
    with pytest.raises(
        InteractionError, match=r"no interactions left after filtering.*per user 5.*per item 1"
    ):
        Interactions.from_arrays(["u", "u", "v"], ["a", "b", "a"], min_user_interactions=5)


def test_empty_input_raises():
    with pytest.raises(InteractionError, match="no interactions"):
        Interactions.from_arrays([], [])


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf, -np.inf])
def test_negative_and_non_finite_values_are_rejected_with_the_row(bad):
    with pytest.raises(InteractionError, match=r"row 2: value .* not a finite number >= 0"):
        Interactions.from_arrays(["u", "v", "w"], ["a", "b", "c"], [1.0, 0.0, bad])


def test_length_mismatches_are_rejected():
    with pytest.raises(InteractionError, match="differ in length"):
        Interactions.from_arrays(["u", "v"], ["a"])
    with pytest.raises(InteractionError, match="values differ in length"):
        Interactions.from_arrays(["u", "v"], ["a", "b"], [1.0])
    with pytest.raises(InteractionError, match="timestamps differ in length"):
        Interactions.from_arrays(["u", "v"], ["a", "b"], None, [1.0])
    with pytest.raises(InteractionError, match="timestamps differ in length"):
        Interactions.from_arrays(["u", "v"], ["a", "b"], None, [1.0, 2.0, 3.0])


def test_non_finite_timestamps_are_rejected():
    with pytest.raises(InteractionError, match="row 1: timestamp"):
        Interactions.from_arrays(["u", "v"], ["a", "b"], None, [1.0, np.nan])
