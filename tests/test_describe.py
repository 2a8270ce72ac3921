"""describe's computation and pictures, fed by hand: no model is trained here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from gmvae_cli import describe
from gmvae_cli.describe import ClusterProfile, examples_figure, heatmap, report, show
from gmvae_cli.moments import GroupMoments

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def feed(profile, frame, clusters, sizes, **per_row):
    """Add the frame in chunks of the given sizes (cycled), slicing the per-row arrays too."""
    start, i = 0, 0
    while start < len(frame):
        stop = min(start + sizes[i % len(sizes)], len(frame))
        extra = {name: values[start:stop] for name, values in per_row.items()}
        profile.add(frame.iloc[start:stop], clusters[start:stop], **extra)
        start, i = stop, i + 1


def mixed_frame(n=3000, k=4, seed=0):
    """Numeric columns at scales far from 1, some NaNs, a categorical column, and clusters
    with -1 (unassigned) among them."""
    rng = np.random.default_rng(seed)
    clusters = rng.integers(-1, k, size=n)
    frame = pd.DataFrame({
        "x": rng.normal(1e4, 50.0, n) + 100.0 * clusters,
        "y": rng.normal(-3.0, 0.001, n),
        "z": rng.exponential(2.0, n),
        "colour": rng.choice(["red", "green", "blue"], n),
    })
    frame.loc[rng.random(n) < 0.1, "x"] = np.nan
    frame.loc[rng.random(n) < 0.05, "colour"] = None
    return frame, clusters


def written_png(path) -> bool:
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    return path.read_bytes()[:8] == PNG_SIGNATURE and not leftovers


def test_group_moments_match_numpy_and_merge_to_total():
    rng = np.random.default_rng(1)
    values, groups = rng.normal(5.0, 3.0, (1000, 3)), rng.integers(0, 3, 1000)
    m = GroupMoments(3, 3)
    for s in range(0, 1000, 333):
        m.add(values[s : s + 333], groups[s : s + 333])
    for g in range(3):
        mine = values[groups == g]
        np.testing.assert_allclose(m.mean[g], mine.mean(0), rtol=1e-12)
        np.testing.assert_allclose(m.variance()[g], mine.var(0), rtol=1e-10)
        np.testing.assert_array_equal(m.min[g], mine.min(0))
    whole = m.total()
    np.testing.assert_allclose(whole.mean[0], values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.variance(ddof=1)[0], values.var(0, ddof=1), rtol=1e-10)


def test_means_and_stds_equal_pandas_groupby_over_uneven_chunks():
    frame, clusters = mixed_frame()
    profile = ClusterProfile(["x", "y", "z"], ["colour"], k=4)
    feed(profile, frame, clusters, sizes=[1, 37, 500, 1, 911])
    result = report(profile)

    assigned = frame[clusters >= 0]
    grouped = assigned.groupby(clusters[clusters >= 0])[["x", "y", "z"]]
    for c in result["clusters"]:
        for column in ("x", "y", "z"):
            got = c["features"][column]
            j = c["cluster"]
            assert got["mean"] == pytest.approx(grouped.mean().loc[j, column], rel=1e-9)
            assert got["std"] == pytest.approx(grouped.std().loc[j, column], rel=1e-9)
    for column in ("x", "y", "z"):  # NaNs skipped column by column, as pandas does
        assert result["overall"]["mean"][column] == pytest.approx(assigned[column].mean(), rel=1e-9)
        assert result["overall"]["std"][column] == pytest.approx(assigned[column].std(), rel=1e-9)
    expected = (assigned["x"].groupby(clusters[clusters >= 0]).mean() - assigned["x"].mean())
    expected /= assigned["x"].std()
    for c in result["clusters"]:
        assert c["features"]["x"]["std_diff"] == pytest.approx(expected[c["cluster"]], rel=1e-9)


def test_unassigned_rows_are_counted_and_left_out():
    frame = pd.DataFrame({"v": [1.0, 2.0, 1000.0, 3.0, -1000.0]})
    profile = ClusterProfile(["v"], [], k=1)
    profile.add(frame, np.array([0, 0, -1, 0, -1]))
    result = report(profile)
    assert (result["rows"], result["rows_unassigned"]) == (3, 2)
    assert result["clusters"][0]["size"] == 3
    assert result["overall"]["mean"]["v"] == pytest.approx(2.0)


def test_a_column_without_values_in_a_cluster_gives_null_not_nan():
    frame = pd.DataFrame({"a": [np.nan, np.nan, 1.0, 3.0, np.inf], "b": [1.0, 2.0, 3.0, 4.0, 5.0]})
    profile = ClusterProfile(["a", "b"], [], k=2)
    profile.add(frame, np.array([0, 0, 1, 1, 1]))
    result = report(profile)
    zero, one = (c["features"] for c in result["clusters"])
    assert zero["a"] == {"mean": None, "std": None, "std_diff": None}
    assert one["a"]["mean"] == pytest.approx(2.0)  # inf counts as missing
    assert [name for name, _ in result["clusters"][0]["top"]] == ["b"]


def test_top_features_are_ordered_by_size_with_their_sign():
    rng = np.random.default_rng(2)
    n = 2000
    clusters = np.repeat([0, 1], n // 2)
    frame = pd.DataFrame(rng.normal(0.0, 1.0, (n, 4)), columns=["small", "big", "neg", "none"])
    frame.loc[clusters == 0, "small"] += 0.5
    frame.loc[clusters == 0, "big"] += 4.0
    frame.loc[clusters == 0, "neg"] -= 2.0
    profile = ClusterProfile(list(frame.columns), [], k=2)
    feed(profile, frame, clusters, sizes=[700])
    top = report(profile, top=3)["clusters"][0]["top"]
    assert [name for name, _ in top] == ["big", "neg", "small"]
    assert top[0][1] > 0 and top[1][1] < 0 and top[2][1] > 0


def test_categorical_shares_and_the_cap_on_values():
    frame, clusters = mixed_frame()
    profile = ClusterProfile(["x"], ["colour"], k=4)
    feed(profile, frame, clusters, sizes=[640])
    result = report(profile)
    assigned = frame[clusters >= 0]
    for c in result["clusters"]:
        mine = assigned[clusters[clusters >= 0] == c["cluster"]]["colour"]
        shares = c["categorical"]["colour"]
        assert shares["red"] == pytest.approx((mine == "red").mean())
        assert shares[describe.MISSING] == pytest.approx(mine.isna().mean())
        assert sum(shares.values()) == pytest.approx(1.0)

    many = pd.DataFrame({"id": [f"v{i % 300}" for i in range(3000)]})
    profile = ClusterProfile([], ["id"], k=1)
    profile.add(many, np.zeros(3000, dtype=int))
    shares = report(profile)["clusters"][0]["categorical"]["id"]
    assert len(shares) == describe.CATEGORY_SHOWN + 1  # the commonest, then the rest together
    assert sum(shares.values()) == pytest.approx(1.0)


def test_a_value_that_sets_a_cluster_apart_is_a_top_feature():
    colour = np.where(np.arange(1000) < 500, "red", "blue")
    frame = pd.DataFrame({"v": np.random.default_rng(3).normal(size=1000), "colour": colour})
    profile = ClusterProfile(["v"], ["colour"], k=2)
    profile.add(frame, (colour == "blue").astype(int))
    name, diff = report(profile, top=1)["clusters"][0]["top"][0]
    assert name in ("colour=red", "colour=blue") and abs(diff) > 0.9


def test_only_the_skewed_column_has_a_median():
    rng = np.random.default_rng(4)
    n = 6000
    clusters = rng.integers(0, 3, n)
    frame = pd.DataFrame({
        "symmetric": rng.normal(0.0, 1.0, n) + 10.0 * (clusters == 0),  # bimodal, not skewed
        "lognormal": rng.lognormal(0.0, 1.0, n),
    })
    profile = ClusterProfile(list(frame.columns), [], k=3)
    feed(profile, frame, clusters, sizes=[1000, 3])
    result = report(profile)
    assert result["skewed_columns"] == ["lognormal"]
    for c in result["clusters"]:
        assert "median" not in c["features"]["symmetric"]
        # every cluster fits in its reservoir here, so the medians are exact
        mine = frame["lognormal"][clusters == c["cluster"]]
        assert c["features"]["lognormal"]["median"] == pytest.approx(mine.median())


def test_the_reservoir_stays_bounded_and_its_medians_stay_close():
    rng = np.random.default_rng(5)
    n, k = 200_000, 4
    profile = ClusterProfile(["u", "w"], [], k=k)
    bound = min(describe.SAMPLE_ROWS, describe.SAMPLE_VALUES // 2)
    clusters = rng.integers(0, k, n)
    values = pd.DataFrame({"u": rng.uniform(0, 1, n), "w": rng.exponential(1.0, n)})
    feed(profile, values, clusters, sizes=[65_536])
    assert profile.sample_rows <= bound
    assert profile.sample_rows == k * profile.sample_capacity
    # uniform: a median from ~5,000 sampled rows is within a few hundredths of 0.5
    np.testing.assert_allclose(profile.medians()[:, 0], 0.5, atol=0.03)


def test_an_empty_cluster_is_reported_without_values():
    frame, clusters = mixed_frame(n=500)
    clusters = np.where(clusters == 2, 0, clusters)  # nobody left in cluster 2
    profile = ClusterProfile(["x", "z"], ["colour"], k=4, examples=2)
    feed(profile, frame, clusters, sizes=[100], scores=np.arange(500.0),
         outliers=np.arange(500) % 10 == 0)
    empty = report(profile)["clusters"][2]
    assert empty["size"] == 0 and empty["share"] == 0.0 and empty["outlier_share"] is None
    assert empty["features"]["x"]["mean"] is None and empty["top"] == []
    assert empty["examples"] == {"typical": [], "atypical": []}


def test_the_report_survives_a_json_round_trip():
    frame, clusters = mixed_frame(n=800)
    rng = np.random.default_rng(6)
    profile = ClusterProfile(["x", "y", "z"], ["colour"], k=5, examples=3)
    feed(profile, frame, clusters, sizes=[300], scores=rng.normal(size=800),
         outliers=rng.random(800) < 0.1)
    result = report(profile)
    text = json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text) == result


def test_outlier_shares_per_cluster():
    clusters = np.array([0, 0, 0, 0, 1, 1, -1])
    outliers = np.array([1, 0, 0, 0, 1, 1, 1], dtype=bool)
    profile = ClusterProfile(["v"], [], k=2)
    profile.add(pd.DataFrame({"v": np.arange(7.0)}), clusters, outliers=outliers)
    result = report(profile)
    assert [c["outlier_share"] for c in result["clusters"]] == [0.25, 1.0]
    assert result["outlier_share"] == pytest.approx(3 / 6)


def test_examples_are_the_highest_and_lowest_scores_of_each_cluster():
    rng = np.random.default_rng(7)
    n = 5000
    clusters, scores = rng.integers(0, 3, n), rng.normal(size=n)
    scores[::97] = np.nan  # rows without a score are never examples
    frame = pd.DataFrame({"v": np.arange(n, dtype=float)})
    profile = ClusterProfile(["v"], [], k=3, examples=4)
    feed(profile, frame, clusters, sizes=[333, 1000], scores=scores)
    for j in range(3):
        mine = np.flatnonzero((clusters == j) & ~np.isnan(scores))
        by_score = mine[np.argsort(scores[mine])]
        found = profile.example_rows(j)
        _, typical_rows, typical_values = found["typical"]
        _, atypical_rows, _ = found["atypical"]
        np.testing.assert_array_equal(typical_rows, by_score[::-1][:4])
        np.testing.assert_array_equal(atypical_rows, by_score[:4])
        np.testing.assert_array_equal(typical_values[:, 0], typical_rows)  # v is the row number


def test_cluster_means_recover_the_centres_of_gaussian_blobs():
    rng = np.random.default_rng(8)
    k, n, d = 4, 8000, 6
    centres = rng.normal(0.0, 8.0, (k, d))
    labels = rng.integers(0, k, n)
    frame = pd.DataFrame(centres[labels] + rng.normal(0.0, 1.0, (n, d)),
                         columns=[f"c{i}" for i in range(d)])
    profile = ClusterProfile(list(frame.columns), [], k=k)
    feed(profile, frame, labels, sizes=[4096])
    for c in report(profile)["clusters"]:
        means = np.array([c["features"][f"c{i}"]["mean"] for i in range(d)])
        np.testing.assert_allclose(means, centres[c["cluster"]], atol=0.1)  # 0.1 of std 1


def test_show_prints_the_summary_and_notes_narrowing(capsys):
    rng = np.random.default_rng(9)
    n = 400
    clusters = np.repeat([0, 1], n // 2)
    frame = pd.DataFrame(rng.normal(size=(n, 30)), columns=[f"f{i}" for i in range(30)])
    frame.loc[clusters == 1, "f7"] += 5.0
    frame["kind"] = np.where(clusters == 1, "a", "b")
    profile = ClusterProfile([f"f{i}" for i in range(30)], ["kind"], k=2)
    profile.add(frame, clusters)
    console = Console(width=200, record=True)
    notes = []
    show(report(profile, top=3), console, note=notes.append)  # kind=a, kind=b, f7
    text = console.export_text()
    assert "+1.0 f7" in text or "+0.9 f7" in text
    assert "−0.9 f7" in text or "−1.0 f7" in text  # a real minus sign
    assert any("of 30" in line for line in notes)


def test_heatmap_writes_a_png_and_caps_the_features(tmp_path):
    rng = np.random.default_rng(10)
    n, width = 600, 55
    clusters = rng.integers(0, 3, n)
    frame = pd.DataFrame(rng.normal(size=(n, width)), columns=[f"f{i}" for i in range(width)])
    for i in range(10):  # ten features that really differ
        frame[f"f{i}"] += 3.0 * (clusters == i % 3)
    profile = ClusterProfile(list(frame.columns), [], k=3)
    profile.add(frame, clusters)
    notes = []
    path = tmp_path / "heat.png"
    shown = heatmap(str(path), report(profile), note=notes.append)
    assert written_png(path)
    assert len(shown) == describe.HEATMAP_FEATURES
    assert {f"f{i}" for i in range(10)} <= set(shown)
    assert notes and "15 more are left out" in notes[0]


def test_examples_figure_writes_a_png(tmp_path):
    rng = np.random.default_rng(11)
    n, side = 300, 6
    clusters = rng.integers(0, 3, n)
    frame = pd.DataFrame(rng.uniform(0, 1, (n, side * side)))
    frame.columns = [f"p{i}" for i in range(side * side)]
    profile = ClusterProfile(list(frame.columns), [], k=4, examples=3)  # cluster 3 stays empty
    profile.add(frame, clusters, scores=rng.normal(size=n))
    path = tmp_path / "examples.png"
    examples_figure(str(path), profile, (side, side))
    assert written_png(path)
    with pytest.raises(ValueError, match="image-shape"):
        examples_figure(str(path), profile, (side, side + 1))


def test_difference_images_write_a_png(tmp_path):
    rng = np.random.default_rng(12)
    n, side = 400, 5
    clusters = rng.integers(0, 3, n)
    frame = pd.DataFrame(rng.uniform(0, 1, (n, side * side)),
                         columns=[f"p{i}" for i in range(side * side)])
    frame["p0"] = 0.0  # a constant pixel: no difference to draw there
    profile = ClusterProfile(list(frame.columns), [], k=4)  # cluster 3 stays empty
    profile.add(frame, clusters)
    path = tmp_path / "maps.png"
    describe.difference_images(str(path), report(profile), (side, side))
    assert written_png(path)
    with pytest.raises(ValueError, match="image-shape"):
        describe.difference_images(str(path), report(profile), (side, side + 1))


def test_describe_stands_apart_from_the_model_and_draws_lazily():
    """The CLI wires describe up later; the module itself pulls in no torch or matplotlib."""
    import subprocess
    import sys

    code = ("import sys, gmvae_cli.describe; "
            "print(sorted({'torch', 'matplotlib', 'gmvae_cli.api'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_text_in_a_numeric_column_is_named_and_nothing_is_counted():
    from gmvae_cli.errors import UserError

    profile = ClusterProfile(["a"], [], k=2)
    with pytest.raises(UserError, match="'a' holds text"):
        profile.add(pd.DataFrame({"a": ["x", "y"]}), np.array([0, 1]))
    assert profile.rows == 0
