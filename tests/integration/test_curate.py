"""Clean, dedup, split and the curate job on real local Spark and Delta."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs import ingest
from jobs.config import load_config, parse_config
from jobs.curation import clean, curate, dedup, split
from jobs.errors import ConfigError, DataFailedError
from jobs.lakehouse import tables
from jobs.lakehouse.ranks import HASH_RANGE_SHIFT
from jobs.validation import validate

pytestmark = pytest.mark.spark


def config(**sections):
    raw = {"dataset": "toy", "kind": "tabular", "source": {"path": "x", "format": "csv"},
           "columns": {"label": "y", "features": ["a", "b", {"name": "c", "kind": "categorical"}]}}  # fmt: skip
    raw.update(sections)
    return parse_config(raw)


SCHEMA = "sample_id string, a string, b double, c string, y string"


def frame(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


def reasons(result) -> dict[str, list[str]]:
    return {r["sample_id"]: list(r["reasons"]) for r in result.rejected.collect()}


# ---------------------------------------------------------------- clean


def test_clean_folds_labels_coerces_and_quarantines_with_exact_reasons(spark):
    cfg = config(clean={"labels": {"classes": ["cat", "dog"], "synonyms": {"doggo": "dog"}},
                        "missing": {"default": "drop", "columns": {"b": "median"}},
                        "outliers": {"method": "none"}})  # fmt: skip
    rows = [
        ("s1", "1.5", 1.0, "x", " Cat "),  # label folded to cat
        ("s2", "2", None, "x", "DOGGO"),  # synonym; b imputed with the median
        ("s3", "abc", 3.0, "x", "dog"),  # a does not parse
        ("s4", "4", 4.0, "x", "bird"),  # unknown label
        ("s5", None, 5.0, "x", "cat"),  # a missing: dropped
        ("s6", "6", 6.0, None, None),  # no label, c missing
        ("s7", " ", 7.0, "x", "cat"),  # a blank: missing, not unreadable
    ]
    result = clean.clean(frame(spark, rows), cfg)
    kept = {r["sample_id"]: r.asDict() for r in result.kept.collect()}
    assert set(kept) == {"s1", "s2"}
    assert kept["s1"]["y"] == "cat" and kept["s2"]["y"] == "dog" and kept["s1"]["a"] == 1.5
    # A value that does not parse is unreadable, not also missing (one reason, counted once).
    assert reasons(result) == {"s3": ["uncoercible_a"], "s4": ["label_unknown"], "s5": ["missing_a"],
                               "s6": ["label_unknown", "missing_c"], "s7": ["missing_a"]}  # fmt: skip
    # The median comes from the rows no earlier check rejected (s1, s2, s5: b = 1, 5): 1.0 (lower median).
    median = result.report.details["imputation"]["values"]["b"]
    assert median in (1.0, 5.0) and kept["s2"]["b"] == median
    # Rejected rows are quarantined as they came in: the original string, the original label.
    original = {r["sample_id"]: r for r in result.rejected.collect()}
    assert original["s3"]["a"] == "abc" and original["s4"]["y"] == "bird"
    assert result.report.rows_in == 7 and result.report.rows_out == 2
    assert result.report.dropped == {"uncoercible_a": 1, "label_unknown": 2, "missing_a": 2, "missing_c": 1}


def test_clean_plans_grow_linearly_with_the_features(spark):
    """Every per-column check appends to the row's reasons. A check whose condition also read the reasons
    doubled Spark's collapsed expression per column (2^n): a 31-feature JSON table ran the driver out of heap.
    Text-typed numbers, every check on (parse, outliers, missing values dropped)."""

    def plan_chars(n: int) -> int:
        names = [f"f{i}" for i in range(n)]
        cfg = parse_config({"dataset": "toy", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                            "columns": {"label": "y", "features": names},
                            "clean": {"missing": {"default": "drop"}, "outliers": {"method": "iqr", "action": "drop"}}})  # fmt: skip
        rows = [(f"s{r}", *[str(r + i) if r != i else "n/a" for i in range(n)], "ab"[r % 2]) for r in range(12)]
        df = spark.createDataFrame(rows, ", ".join(["sample_id string", *[f"{c} string" for c in names], "y string"]))
        result = clean.clean(df, cfg)
        assert {k: v for k, v in result.report.dropped.items() if not k.startswith("outlier_")} == {
            f"uncoercible_f{i}": 1 for i in range(n)}  # fmt: skip
        return len(result.kept._jdf.queryExecution().optimizedPlan().toString())

    small, large = plan_chars(5), plan_chars(10)
    assert large < 3 * small, (small, large)


LABELS = [  # raw label, label after clean without fuzzy, with fuzzy (None: quarantined as label_unknown)
    ("Class_1", "class_1", "class_1"),
    ("class 1", "class_1", "class_1"),  # another separator
    (" CLASS-1 ", "class_1", "class_1"),
    ("class__2", "class_2", "class_2"),  # separators run together
    ("Big Cat", "big-cat", "big-cat"),  # the class map's own spelling is kept
    ("kitty", "big-cat", "big-cat"),  # a synonym
    ("clas 1", None, "class_1"),  # one edit from class_1 only
    ("class 3", None, None),  # one edit from class_1 and class_2: a tie is never mapped
    ("zebra", None, None),  # far from every class
]


@pytest.mark.parametrize("fuzzy", [False, True])
def test_labels_fold_separators_and_name_the_nearest_class(spark, fuzzy):
    cfg = config(clean={"labels": {"classes": ["class_1", "class_2", "big-cat"], "synonyms": {"Kitty": "big cat"},
                                   "fuzzy": fuzzy}, "outliers": {"method": "none"}})  # fmt: skip
    rows = [(f"s{i}", "1", 1.0, "x", raw) for i, (raw, _, _) in enumerate(LABELS)]
    result = clean.clean(frame(spark, rows), cfg)
    kept = {r["sample_id"]: r["y"] for r in result.kept.collect()}
    want = {f"s{i}": (f if fuzzy else plain) for i, (_, plain, f) in enumerate(LABELS)}
    assert kept == {k: v for k, v in want.items() if v is not None}
    assert reasons(result) == {k: ["label_unknown"] for k, v in want.items() if v is None}
    unknown = result.report.details["labels"]["unknown"]
    assert unknown["clas 1"] == {"class": "class_1", "distance": 1, "unique": True, "mapped": fuzzy}
    assert unknown["class 3"]["distance"] == 1 and not unknown["class 3"]["unique"] and not unknown["class 3"]["mapped"]
    assert unknown["zebra"]["distance"] > 2 and not unknown["zebra"]["mapped"]


def test_labels_without_a_class_map_take_each_keys_commonest_spelling(spark):
    cfg = config(clean={"outliers": {"method": "none"}})
    raw = ["t-shirt", "T-Shirt", "t shirt", "coat", "Coat ", "t_shirt", "bag"]
    result = clean.clean(frame(spark, [(f"s{i}", "1", 1.0, "x", y) for i, y in enumerate(raw)]), cfg)
    kept = {r["sample_id"]: r["y"] for r in result.kept.collect()}
    assert kept == {"s0": "t-shirt", "s1": "t-shirt", "s2": "t-shirt", "s3": "coat", "s4": "coat", "s5": "t-shirt",
                    "s6": "bag"}  # fmt: skip


def test_clean_plan_grows_linearly_with_the_per_column_checks(spark):
    """Every feature adds a missing-value check (and an outlier flag); the plan Spark optimises and
    compiles must grow with their number, not double per check (it once did: 126 s to clean 5,000
    rows of 11 features, generated code beyond the JVM's 64 KB method limit)."""

    def plan_size(n: int) -> int:
        names = [f"f{i}" for i in range(n)]
        cfg = parse_config({"dataset": "toy", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                            "columns": {"label": "y", "features": names},
                            "clean": {"missing": {"default": "drop"}, "outliers": {"method": "none"}}})  # fmt: skip
        df = spark.createDataFrame([("s1", "a", *[float(i) for i in range(n)]), ("s2", "b", *[None] * n)],
                                   "sample_id string, y string, " + ", ".join(f"{c} double" for c in names))  # fmt: skip
        result = clean.clean(df, cfg)
        assert {r["sample_id"]: r["reason"] for r in result.rejected.collect()} == {"s2": "missing_f0"}
        return len(result.rejected._jdf.queryExecution().optimizedPlan().toString())

    small, large = plan_size(6), plan_size(12)
    assert large < 3 * small, (small, large)  # linear: about 2x; doubling per check: 64x


def test_clean_outliers_by_iqr_drop_clip_and_flag(spark):
    rows = [(f"s{i}", str(v), float(i), "x", "cat") for i, v in enumerate([10, 11, 12, 13, 14, 15, 16, 1000])]
    base = {"labels": {"classes": ["cat"]}, "missing": {"default": "keep"}}
    dropped = clean.clean(frame(spark, rows), config(clean={**base, "outliers": {"method": "iqr", "action": "drop",
                                                                                 "columns": ["a"]}}))  # fmt: skip
    assert reasons(dropped) == {"s7": ["outlier_a"]}
    clipped = clean.clean(frame(spark, rows), config(clean={**base, "outliers": {"method": "iqr", "action": "clip"}}))
    hi = clipped.report.details["outliers"]["bounds"]["*"]["a"][1]
    assert {r["sample_id"]: r["a"] for r in clipped.kept.collect()}["s7"] == hi < 1000
    flagged = clean.clean(frame(spark, rows), config(clean={**base, "outliers": {"method": "mad"}}))
    flags = {r["sample_id"]: list(r["outlier_columns"]) for r in flagged.kept.collect()}
    assert flags["s7"] == ["a"] and flags["s3"] == []


def test_clean_hashes_pii_with_a_salt_and_refuses_without_one(spark, monkeypatch):
    rows = [("s1", "1", 1.0, "alice", "cat"), ("s2", "2", 2.0, "bob", "dog")]
    cfg = config(clean={"pii": {"columns": {"c": "hash"}}, "outliers": {"method": "none"}})
    monkeypatch.delenv("FULCRUM_PII_SALT", raising=False)
    with pytest.raises(ConfigError, match="FULCRUM_PII_SALT"):
        clean.clean(frame(spark, rows), cfg)
    monkeypatch.setenv("FULCRUM_PII_SALT", "pepper")
    hashed = {r["sample_id"]: r["c"] for r in clean.clean(frame(spark, rows), cfg).kept.collect()}
    assert len(hashed["s1"]) == 64 and "alice" not in hashed.values()


# ---------------------------------------------------------------- dedup


def test_connected_components_join_chains_without_collecting_pairs(spark):
    edges = spark.createDataFrame([("a", "b"), ("c", "b"), ("c", "d"), ("x", "y")], "src string, dst string")
    groups = {r["node"]: r["component"] for r in dedup.connected_components(edges).collect()}
    assert groups == {"a": "a", "b": "a", "c": "a", "d": "a", "x": "x", "y": "x"}


def test_connected_components_of_a_10000_row_chain_and_a_random_graph_match_scipy(spark):
    """A chain of near duplicates 10,000 long (min-label propagation needed 10,000 rounds) plus a random
    sparse graph, in shuffled id order; the components are scipy's, each named by its smallest id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_components

    rng = np.random.default_rng(3)
    n_chain, n_rand = 10_000, 3_000
    names = [f"n{v:06d}" for v in rng.permutation(n_chain + n_rand)]  # the chain does not follow id order
    pairs = [(i, i + 1) for i in range(n_chain - 1)]
    pairs += [tuple(n_chain + rng.integers(0, n_rand, 2)) for _ in range(2_000)]
    pairs = [(a, b) for a, b in pairs if a != b]
    edges = spark.createDataFrame([(names[a], names[b]) for a, b in pairs], "src string, dst string")
    got = {r["node"]: r["component"] for r in dedup.connected_components(edges).collect()}
    a, b = np.array(pairs).T
    _, label = scipy_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(len(names),) * 2), directed=False)
    members: dict[int, list[str]] = {}
    nodes = set(a) | set(b)
    for i in nodes:
        members.setdefault(label[i], []).append(names[i])
    want = {names[i]: min(members[label[i]]) for i in nodes}
    assert got == want
    assert len(set(got[names[i]] for i in range(n_chain))) == 1


DEDUP_ROWS = [
    ("s1", "1.0", 10.0, "x", "cat"),
    ("s2", "1.0", 10.0, "x", "cat"),  # exact copy of s1
    ("s3", "1.001", 10.01, "x", "cat"),  # near copy of s1
    ("s4", "5.0", 50.0, "x", "dog"),
    ("s5", "5.0", 50.0, "x", "cat"),  # exact copy of s4, other label: conflict
    ("s6", "9.0", 90.0, "x", "dog"),
    ("s7", "3.0", 30.0, "y", "dog"),
    ("s8", "3.0", 30.0, "z", "dog"),  # differs from s7 in the categorical feature: not a duplicate
]


def dedup_input(spark, cfg):
    return clean.clean(frame(spark, DEDUP_ROWS), cfg).kept


def test_dedup_keeps_one_survivor_and_quarantines_conflicts(spark):
    cfg = config(clean={"outliers": {"method": "none"}}, dedup={"near": {"tolerance": 0.05}})
    found = dedup.find(dedup_input(spark, cfg), cfg)
    groups = {r["sample_id"]: r["dup_group"] for r in found.collect()}
    assert groups["s1"] == groups["s2"] == groups["s3"] == "s1" and groups["s4"] == groups["s5"] == "s4"
    assert len({groups[s] for s in ("s1", "s4", "s6", "s7", "s8")}) == 5
    result = dedup.remove(found, cfg)
    assert sorted(r["sample_id"] for r in result.kept.collect()) == ["s1", "s6", "s7", "s8"]
    assert {r["sample_id"]: (r["reason"], r["duplicate_of"]) for r in result.rejected.collect()} == {
        "s2": ("exact_duplicate", "s1"), "s3": ("near_duplicate", "s1"),
        "s4": ("label_conflict", None), "s5": ("label_conflict", None),
    }  # fmt: skip
    assert result.report.dropped == {"exact_duplicate": 1, "near_duplicate": 1, "label_conflict": 2}


@pytest.mark.parametrize("policy, kept, rejected", [
    ("quarantine", ["s1", "s6", "s7", "s8"],
     {"s4": ("label_conflict", None), "s5": ("label_conflict", None), "s9": ("label_conflict", None)}),
    ("majority", ["s1", "s4", "s6", "s7", "s8"],  # dog 2 : cat 1, the survivor is dog's smallest id
     {"s5": ("label_conflict", None), "s9": ("exact_duplicate", "s4")}),
    ("keep", ["s1", "s4", "s5", "s6", "s7", "s8"],  # one survivor per label
     {"s9": ("exact_duplicate", "s4")}),
])  # fmt: skip
def test_a_group_whose_labels_disagree_follows_dedup_conflicts(spark, policy, kept, rejected):
    cfg = config(clean={"outliers": {"method": "none"}}, dedup={"conflicts": policy})
    rows = DEDUP_ROWS + [("s9", "5.0", 50.0, "x", "dog")]  # a second dog copy of s4
    result = dedup.remove(dedup.find(clean.clean(frame(spark, rows), cfg).kept, cfg), cfg)
    assert sorted(r["sample_id"] for r in result.kept.collect()) == kept
    got = {r["sample_id"]: (r["reason"], r["duplicate_of"]) for r in result.rejected.collect()}
    assert got == {"s2": ("exact_duplicate", "s1"), "s3": ("near_duplicate", "s1"), **rejected}


def test_features_that_collide_by_chance_are_not_evidence_of_a_copy(spark):
    """300 distinct records over three features with 3 values each (27 combinations): most share every value
    with another by chance. The first 10 are one record delivered 10 times (same id, same values)."""
    rng = np.random.default_rng(0)
    rows = [(f"r{i:03d}", str(int(rng.integers(3))), float(rng.integers(3)), "xyz"[int(rng.integers(3))], "cat")
            for i in range(300)]  # fmt: skip
    rows[1:10] = [(f"r{i:03d}", *rows[0][1:]) for i in range(1, 10)]
    df = clean.clean(frame(spark, rows), config(clean={"outliers": {"method": "none"}})).kept
    df = df.withColumn("rid", F.when(F.col("sample_id") < "r010", F.lit("R0")).otherwise(F.col("sample_id")))

    def kept(**dedup_cfg):
        cfg = config(clean={"outliers": {"method": "none"}}, dedup=dedup_cfg)
        how = dedup.plan(df, cfg)
        result = dedup.remove(dedup.find(df, cfg, how), cfg, how)
        return result.kept.count(), result.report.details

    n, details = kept()  # no id column: exact dedup on the features is off, and so is the near search
    assert n == 300 and details["chance"]["explained"] and not details["exact"] and not details["near"]
    assert details["chance"]["expected_pairs"] > 1000 and details["chance"]["observed_pairs"] > 1000
    assert kept(exact={"chance": "ignore"}, near={"enabled": False})[0] <= 27  # the old behaviour: one per combination
    assert kept(exact={"columns": ["rid"]})[0] == 291  # identity columns: the ten deliveries are one record
    with_id = config(columns={"id": "rid", "label": "y", "features": ["a", "b", {"name": "c", "kind": "categorical"}]},
                     clean={"outliers": {"method": "none"}})  # fmt: skip
    how = dedup.plan(df, with_id)
    assert how.key_columns == ["rid", "a", "b", "c"] and how.exact and not how.near  # content plus id
    assert dedup.remove(dedup.find(df, with_id, how), with_id, how).kept.count() == 291
    with pytest.raises(ConfigError, match=r"dedup.exact.columns are not columns of the table: \['nope'\]"):
        dedup.plan(df, config(dedup={"exact": {"columns": ["nope"]}}))
    assert config(dedup={"exact": False}).dedup.exact.enabled is False  # the old boolean form still reads


def test_near_duplicates_kept_share_a_group_and_a_fold(spark):
    cfg = config(clean={"outliers": {"method": "none"}}, dedup={"near": {"action": "keep"}}, split={"folds": 2})
    result = dedup.remove(dedup.find(dedup_input(spark, cfg), cfg), cfg)
    kept = sorted(r["sample_id"] for r in result.kept.collect())
    assert kept == ["s1", "s3", "s6", "s7", "s8"]  # s2 (exact) removed, s3 (near) kept in s1's group
    folds = {r["sample_id"]: r["fold"] for r in split.split(result.kept, cfg).kept.collect()}
    assert folds["s1"] == folds["s3"]


# ---------------------------------------------------------------- image near duplicates


def _digit(index: int):
    from sklearn.datasets import load_digits

    from jobs.samples import _digit_png

    return _digit_png(load_digits().images[index])


CLOSE_PHASH = (583, 1361)  # a six and a five of scikit-learn's digits: the closest pHashes of two classes (6 bits)


def _probed(spark, tmp_path, images: dict, labels: dict | None = None):
    from PIL import Image

    from jobs.validation.probe import probe_images

    root = tmp_path / "img"
    root.mkdir()
    for name, img in images.items():
        (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(root / f"{name}.png")
    rows = [(name, f"{name}.png", (labels or {}).get(name, "a")) for name in images]
    df = spark.createDataFrame(rows, "sample_id string, path string, y string")
    return probe_images(df, "path", str(root), thumbnails=True), str(root)


def image_config(root: str, conflicts: str = "per_label", **verify):
    return parse_config({"dataset": "img", "kind": "images", "source": {"path": "x", "format": "csv"},
                         "columns": {"label": "y"}, "images": {"root": root},
                         "dedup": {"near": {"conflicts": conflicts, "verify": verify}}})  # fmt: skip


def test_image_near_duplicates_a_shifted_copy_joins_a_close_phash_does_not_and_chains_do_not_merge(spark, tmp_path):
    """Literal images whose right groups are known. A digit and its copy shifted by a pixel (pHash many bits
    apart) are one group; two different digits whose pHashes are within the old radius are not; a chain
    A ~ B ~ C (B half A, half C) with A and C unrelated never puts A and C together."""
    from PIL import Image

    from jobs.validation.probe import phash

    i, j = CLOSE_PHASH
    assert bin(int(phash(_digit(i)), 16) ^ int(phash(_digit(j)), 16)).count("1") <= 6  # pHash-only would merge
    src = _digit(5)
    shifted = src.transform(src.size, Image.Transform.AFFINE, (1, 0, -1, 0, 1, -1))
    assert bin(int(phash(src), 16) ^ int(phash(shifted), 16)).count("1") > 6  # beyond any pHash radius
    rng = np.random.default_rng(0)
    a = np.asarray(Image.fromarray((rng.random((8, 8)) * 255).astype("uint8")).resize((32, 32), Image.BICUBIC))
    c = np.asarray(Image.fromarray((rng.random((8, 8)) * 255).astype("uint8")).resize((32, 32), Image.BICUBIC))
    b = ((a.astype(float) + c) / 2).astype("uint8")  # NCC(a, b) ~ NCC(b, c) ~ 0.7, NCC(a, c) ~ 0
    images = {"d1": src, "d2": shifted, "p1": _digit(i), "p2": _digit(j), "q1": a, "q2": b, "q3": c}
    probed, root = _probed(spark, tmp_path, images)
    cfg = image_config(root, threshold=0.6)  # loose enough for the chain's links, not for a and c
    how = dedup.plan(probed, cfg)
    groups = {r["sample_id"]: r["dup_group"] for r in dedup.find(probed, cfg, how).collect()}
    assert groups["d1"] == groups["d2"] == "d1"
    assert groups["p1"] != groups["p2"]
    assert groups["q1"] != groups["q3"]
    assert groups["q2"] in (groups["q1"], groups["q3"])  # b joins one of them, whichever anchors its group
    assert how.near_check["verified_pairs"] >= 3 and how.near_check["rounds"] >= 1
    # With the default (auto) threshold the chain's half-copies are not copies at all.
    auto = image_config(root)
    groups = {r["sample_id"]: r["dup_group"] for r in dedup.find(probed, auto).collect()}
    assert groups["d1"] == groups["d2"] and len({groups[k] for k in ("p1", "p2", "q1", "q2", "q3")}) == 5


def test_a_near_group_keeps_one_survivor_per_label_and_exact_copies_still_conflict(spark, tmp_path):
    from PIL import ImageEnhance

    src, other = _digit(5), _digit(40)
    images = {"a1": src, "a2": ImageEnhance.Brightness(src).enhance(1.15), "b1": other, "b2": other}
    labels = {"a1": "five", "a2": "six", "b1": "one", "b2": "seven"}
    probed, root = _probed(spark, tmp_path, images, labels)
    cfg = image_config(root)
    result = dedup.remove(dedup.find(probed, cfg), cfg)
    assert sorted(r["sample_id"] for r in result.kept.collect()) == ["a1", "a2"]  # a near pair: one per label
    assert {r["sample_id"]: r["reason"] for r in result.rejected.collect()} == {"b1": "label_conflict",
                                                                                 "b2": "label_conflict"}  # fmt: skip
    whole = image_config(root, conflicts="group")
    assert dedup.remove(dedup.find(probed, whole), whole).kept.count() == 0


def test_image_dedup_of_one_image_or_none(spark, tmp_path):
    """Odd sizes: a single image (one bucket of one: no pair, no crash), and a table with no image left."""
    probed, root = _probed(spark, tmp_path, {"only": _digit(3)})
    cfg = image_config(root)
    how = dedup.plan(probed, cfg)
    result = dedup.remove(dedup.find(probed, cfg, how), cfg, how)
    assert [r["sample_id"] for r in result.kept.collect()] == ["only"] and result.rejected.count() == 0
    assert how.near_check["images"] == 1 and how.near_check["verified_pairs"] == 0
    empty = probed.limit(0)
    assert dedup.remove(dedup.find(empty, cfg), cfg).kept.count() == 0


def test_the_threshold_checks_itself_on_random_pairs(spark, tmp_path, caplog):
    """A threshold that accepts a share of random pairs of this table warns with the figures and auto's value;
    auto accepts none of them."""
    images = {f"d{k:03d}": _digit(k) for k in range(60)}
    probed, root = _probed(spark, tmp_path, images)
    loose = image_config(root, threshold=0.5)
    how = dedup.plan(probed, loose)
    with caplog.at_level("WARNING", logger="jobs.curation.near_images"):
        dedup.find(probed, loose, how).count()
    check = how.near_check
    assert check["warned"] and check["accepted_share"] > 0.001 and check["random_pairs"] == 60 * 59 // 2
    assert "accepts" in caplog.text and f"{check['auto']:.4f}" in caplog.text
    auto = image_config(root)
    how = dedup.plan(probed, auto)
    dedup.find(probed, auto, how).count()
    assert not how.near_check["warned"] and how.near_check["accepted_share"] == 0.0
    assert how.near_check["threshold"] == how.near_check["auto"] > 0.99  # low-detail digits: a tight threshold


# ---------------------------------------------------------------- split


def test_split_is_deterministic_stratified_and_holds_out_a_test_part(spark):
    rows = [(f"r{i:03d}", "1", float(i), "x", "cat" if i % 3 else "dog") for i in range(90)]
    df = spark.createDataFrame(rows, SCHEMA).withColumn("dup_group", F.col("sample_id"))
    cfg = config(split={"folds": 4, "test_fraction": 0.2})
    first = {r["sample_id"]: r["fold"] for r in split.split(df, cfg).kept.collect()}
    again = {r["sample_id"]: r["fold"] for r in split.split(df.orderBy("b", ascending=False), cfg).kept.collect()}
    assert first == again
    per = split.split(df, cfg).report.details["class_counts_per_fold"]
    assert per["cat"]["-1"] == 12 and per["dog"]["-1"] == 6  # round(0.2 x 60), round(0.2 x 30)
    for cls in ("cat", "dog"):
        counts = [per[cls][str(f)] for f in range(4)]
        assert max(counts) - min(counts) <= 1
    other_seed = {r["sample_id"]: r["fold"] for r in split.split(df, config(seed=1, split={"folds": 4})).kept.collect()}
    assert other_seed != first


def test_fold_ranks_by_hash_ranges_equal_one_window_over_each_class(spark):
    """The split ranks each class in 1,024 hash ranges (so no task holds a whole class); the folds must be
    exactly those of the single window over the class that it replaces."""
    from pyspark.sql import Window

    groups = spark.range(5000).select(F.format_string("g%05d", "id").alias("dup_group"),
                                      F.when(F.col("id") % 10 < 7, "a").when(F.col("id") % 10 < 9, "b")
                                      .otherwise("c").alias("_class"))  # fmt: skip
    got = {r[0]: r[1] for r in split.assign_folds(groups, seed=3, k=5, test=0.15).collect()}
    order = Window.partitionBy("_class").orderBy(F.xxhash64(F.lit(3), "dup_group"), "dup_group")
    ref = (groups.withColumn("rank", F.row_number().over(order) - 1)
           .withColumn("test", F.round(F.count(F.lit(1)).over(Window.partitionBy("_class")) * 0.15).cast("int")))  # fmt: skip
    expected = {r["dup_group"]: -1 if r["rank"] < r["test"] else (r["rank"] - r["test"]) % 5 for r in ref.collect()}
    assert got == expected
    ranges = groups.select(F.shiftright(F.xxhash64(F.lit(3), "dup_group"), HASH_RANGE_SHIFT)).distinct().count()
    assert ranges > 900  # the ranges really cut the classes up


# ---------------------------------------------------------------- the job


def test_curate_on_the_cancer_sample_finds_every_injected_duplicate(spark, sample_dir, tmp_path):
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml", {"lake_root": str(tmp_path / "lake")})
    ingest.run(spark, cfg, "i-1")
    with pytest.raises(ConfigError, match="not been validated"):
        curate.run(spark, cfg, "c-0")
    validate.run(spark, cfg, "v-1")
    report = curate.run(spark, cfg, "c-1")
    lake = tables.Lake(cfg.lake_dir)
    silver = {r["record_id"]: r for r in tables.read(spark, lake.path("silver")).collect()}
    quarantined = {
        r["record_id"]: r for r in tables.read(spark, lake.path("quarantine")).where("stage = 'dedup'").collect()
    }
    injected = [json.loads(x) for x in (sample_dir / "cancer" / "injections.jsonl").read_text().splitlines()]
    for e in injected:
        if e["kind"] in ("exact_duplicate", "near_duplicate"):
            pair = {e["record_id"], e["of"]}
            assert len(pair & set(silver)) == 1, e  # one of the two survives
            removed = (pair - set(silver)).pop()
            assert quarantined[removed]["reason"] == e["kind"], e
        if e["kind"] == "label_variant" and e["record_id"] in silver:
            assert silver[e["record_id"]]["diagnosis"] == e["original"]
    assert {r["diagnosis"] for r in silver.values()} == {"benign", "malignant"}
    assert report.dropped == {"exact_duplicate": 12, "near_duplicate": 12}
    assert (tmp_path / "lake" / "cancer" / "reports" / "c-1" / "folds.png").is_file()
    # Re-running writes the same silver rows and replaces, not duplicates, the quarantine rows.
    curate.run(spark, cfg, "c-2")
    again = {r["record_id"]: (r["fold"], r["dup_group"]) for r in tables.read(spark, lake.path("silver")).collect()}
    assert again == {k: (r["fold"], r["dup_group"]) for k, r in silver.items()}
    assert tables.read(spark, lake.path("quarantine")).where("stage = 'dedup'").count() == 24


def test_a_wide_table_with_audit_verdicts_curates_and_its_quarantine_joins(spark):
    """31 text-typed numeric features and the audit's verdicts from the run before (found on a JSON Lines
    table: the quarantine's join with them spent minutes in Catalyst's constraint propagation, which grows
    exponentially with a wide projection's aliases; the session turns it off)."""
    assert spark.conf.get("spark.sql.constraintPropagation.enabled") == "false"
    names = [f"f{i}" for i in range(31)]
    cfg = parse_config({"dataset": "toy", "kind": "tabular", "source": {"path": "x", "format": "csv"},
                        "columns": {"label": "y", "features": names}, "split": {"folds": 2},
                        "clean": {"label_issues": "drop"}})  # fmt: skip
    rows = [(f"s{r:02d}", *[str(r * 31 + i) if (r, i) != (3, 0) else "n/a" for i in range(31)], "ab"[r % 2])
            for r in range(40)]  # fmt: skip
    df = spark.createDataFrame(rows, ", ".join(["sample_id string", *[f"{c} string" for c in names], "y string"]))
    issues = spark.createDataFrame([("s05", "b", "a", True), ("s06", "a", "b", False)],
                                   "sample_id string, given_class string, suggested_class string, actionable boolean")  # fmt: skip
    silver, rejected, reports = curate.curate(df, cfg, None, issues)
    quarantine = {r["sample_id"]: r["reasons"] for r in df.join(rejected, "sample_id").collect()}
    assert quarantine == {"s03": ["uncoercible_f0"], "s05": ["label_issue"]}  # s06's verdict is not actionable
    assert silver.count() == 38 and reports[0].dropped == {"uncoercible_f0": 1, "label_issue": 1}


def test_curate_refuses_single_class_data(spark, sample_dir, tmp_path):
    cfg = load_config(sample_dir / "cancer" / "cancer.yaml",
                      {"lake_root": str(tmp_path / "lake"), "clean.labels.classes": ["benign"]})  # fmt: skip
    ingest.run(spark, cfg, "i-1")
    validate.run(spark, cfg, "v-1")
    with pytest.raises(DataFailedError, match="training needs at least two"):
        curate.run(spark, cfg, "c-1")
    assert not tables.exists(spark, tables.Lake(cfg.lake_dir).path("silver"))


def test_curate_on_the_digits_sample_groups_every_copy_and_loses_no_distinct_image(spark, sample_dir, curated):
    cfg = curated["digits"]
    lake = tables.Lake(cfg.lake_dir)
    group = {
        r["record_id"]: r["dup_group"]
        for r in tables.read(spark, lake.path("quarantine")).where("stage = 'dedup'").collect()
    }
    group.update({r["record_id"]: r["dup_group"] for r in tables.read(spark, lake.path("silver")).collect()})
    injected = [json.loads(x) for x in (sample_dir / "digits" / "injections.jsonl").read_text().splitlines()]
    exact = [(e["record_id"], e["of"]) for e in injected if e["kind"] == "exact_duplicate"]
    assert exact and all(group[a] == group[b] for a, b in exact)
    # Every near copy (brightened, re-encoded, shifted by a pixel) joins its source: the NCC check sees through
    # the shift that moves the pHash of an 8x8 digit by 8-22 bits.
    near = [(e["record_id"], e["of"]) for e in injected if e["kind"] == "near_duplicate"]
    assert near and all(group[a] == group[b] for a, b in near)
    # ...and no distinct image is lost: every image dedup quarantined (copy or source: the smallest sample_id
    # survives) still has a copy of itself in silver, unless it is an exact copy whose label a flip made
    # disagree (dedup.conflicts: quarantine).
    origin = {e["record_id"]: e["of"] for e in injected if e["kind"] in ("exact_duplicate", "near_duplicate")}
    alive = {origin.get(r["record_id"], r["record_id"]) for r in tables.read(spark, lake.path("silver")).collect()}
    removed = tables.read(spark, lake.path("quarantine")).where("stage = 'dedup'").collect()
    assert removed and all(origin.get(r["record_id"], r["record_id"]) in alive for r in removed
                           if r["reason"] != "label_conflict")  # fmt: skip
    exact_sources = {b for _, b in exact} | {a for a, _ in exact}
    assert all(r["record_id"] in exact_sources for r in removed if r["reason"] == "label_conflict")
    assert "image_thumb" not in tables.read(spark, lake.path("silver")).columns
    assert "image_thumb" not in tables.read(spark, lake.path("quarantine")).columns
    labels = {r["label"] for r in tables.read(spark, lake.path("silver")).select("label").collect()}
    assert labels == {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
