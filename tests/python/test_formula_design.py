"""Tests of mlnpe.formula.design and mlnpe.formula.names: design matrices with R's coding and brms's names."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from mlnpe.errors import DataError, SpecError
from mlnpe.formula.design import Design, DesignInfo, build_design
from mlnpe.formula.names import brms_names, uncenter_intercept
from mlnpe.formula.terms import parse_formula


def design(formula, data, **kwargs) -> Design:
    return build_design(parse_formula(formula), data, **kwargs)


@pytest.fixture
def sleep() -> pd.DataFrame:
    """sleepstudy-like: 3 subjects x 4 days, subjects out of numeric order."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "Reaction": rng.normal(300.0, 30.0, 12),
            "Days": np.tile(np.arange(4), 3),
            "Subject": np.repeat([372, 308, 1000], 4),
        }
    )


@pytest.fixture
def people() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "x": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            "Sex": ["Male", "Female", "Male", "Female", "Male", "Female"],
            "f": ["b", "a", "c", "a", "b", "c"],
            "g": ["s2", "s1", "s2", "s1", "s3", "s3"],
        }
    )


def test_sleepstudy_names_and_matrices(sleep):
    d = design("Reaction ~ Days + (Days | Subject)", sleep)
    assert d.x_names == ("Days",) and d.z_names == ("Intercept", "Days") and d.intercept
    assert d.levels == ("308", "372", "1000")  # numeric order, as R orders an integer column
    assert d.group.tolist() == [1] * 4 + [0] * 4 + [2] * 4
    np.testing.assert_array_equal(d.X[:, 0], sleep["Days"].to_numpy())
    np.testing.assert_array_equal(d.Z, np.column_stack([np.ones(12), sleep["Days"]]))
    np.testing.assert_array_equal(d.y, sleep["Reaction"].to_numpy())
    assert d.y.dtype == np.float64 and d.group.dtype == np.int64 and d.trials is None
    np.testing.assert_allclose(d.x_means, [1.5])
    names = brms_names(d)
    assert names["b"] == ("b_Intercept", "b_Days")
    assert names["sd"] == ("sd_Subject__Intercept", "sd_Subject__Days")
    assert names["cor"] == ("cor_Subject__Intercept__Days",)
    assert names["r"] == (
        "r_Subject[308,Intercept]", "r_Subject[372,Intercept]", "r_Subject[1000,Intercept]",
        "r_Subject[308,Days]", "r_Subject[372,Days]", "r_Subject[1000,Days]",
    )  # fmt: skip


def test_design_is_frozen(sleep):
    d = design("Reaction ~ Days + (1 | Subject)", sleep)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.intercept = False  # type: ignore[misc]


def test_factor_treatment_contrasts_and_interaction_names(people):
    d = design("y ~ x * Sex + (1 | g)", people)
    assert d.x_names == ("x", "SexMale", "x:SexMale")  # "Female" < "Male": Female is the reference
    male = (people["Sex"] == "Male").to_numpy(dtype=float)
    np.testing.assert_array_equal(d.X, np.column_stack([people["x"], male, people["x"] * male]))
    assert brms_names(d)["b"] == ("b_Intercept", "b_x", "b_SexMale", "b_x:SexMale")
    # variables in formula order: Sex first
    assert design("y ~ Sex * x + (1 | g)", people).x_names == ("SexMale", "x", "SexMale:x")


def test_reference_level_is_the_first_sorted_level(people):
    frame = people.assign(Sex=people["Sex"].replace({"Female": "female"}))
    # R sorts case-insensitively in an English locale: "female" < "Male"
    assert design("y ~ Sex + (1 | g)", frame).x_names == ("SexMale",)
    frame = people.assign(f=["B", "a", "b", "a", "B", "b"])
    assert design("y ~ f + (1 | g)", frame).x_names == ("fb", "fB")  # "a" < "b" < "B"


def test_no_intercept_gives_every_level_for_the_first_factor_only(people):
    d = design("y ~ 0 + f + Sex + (1 | g)", people)
    assert d.x_names == ("fa", "fb", "fc", "SexMale") and not d.intercept
    np.testing.assert_array_equal(d.X[:, :3].sum(axis=1), np.ones(6))
    assert brms_names(d)["b"] == ("b_fa", "b_fb", "b_fc", "b_SexMale")
    assert design("y ~ 0 + x + f + (1 | g)", people).x_names == ("x", "fa", "fb", "fc")


def test_interaction_coding_follows_model_matrix(people):
    # numeric:factor without the factor's main effect: an indicator per level
    assert design("y ~ x:f + (1 | g)", people).x_names == ("x:fa", "x:fb", "x:fc")
    assert design("y ~ x + x:f + (1 | g)", people).x_names == ("x", "x:fb", "x:fc")
    # factor:factor alone: all combinations, the first factor varying fastest
    assert design("y ~ f:Sex + (1 | g)", people).x_names == (
        "fa:SexFemale", "fb:SexFemale", "fc:SexFemale", "fa:SexMale", "fb:SexMale", "fc:SexMale",
    )  # fmt: skip
    # nested coding: f + f:Sex
    d = design("y ~ f + f:Sex + (1 | g)", people)
    assert d.x_names == ("fb", "fc", "fa:SexMale", "fb:SexMale", "fc:SexMale")
    is_b = (people["f"] == "b").to_numpy(dtype=float)
    is_male = (people["Sex"] == "Male").to_numpy(dtype=float)
    np.testing.assert_array_equal(d.X[:, 3], is_b * is_male)


def test_categorical_keeps_category_order_and_drops_unused(people):
    frame = people.assign(f=pd.Categorical(people["f"], categories=["c", "unused", "b", "a"]))
    d = design("y ~ f + (1 | g)", frame)
    assert d.x_names == ("fb", "fa") and d.info.factor_levels["f"] == ("c", "b", "a")


def test_bool_columns_are_factors_and_ints_numeric(people):
    frame = people.assign(treat=[True, False, True, False, False, True], k=[1, 2, 3, 1, 2, 3])
    d = design("y ~ treat + k + (1 | g)", frame)
    assert d.x_names == ("treatTRUE", "k")
    assert d.info.numeric == ("k",) and d.info.factor_levels == {"treat": ("FALSE", "TRUE")}


def test_level_names_with_spaces(people):
    frame = people.assign(f=["a b", "c", "a b", "c", "c", "a b"], g=["u v", "w", "u v", "w", "w", "u v"])
    d = design("y ~ 0 + f + (0 + f | g)", frame)
    assert d.x_names == ("fa b", "fc") and d.z_names == ("fa b", "fc")  # model.matrix keeps the space
    assert d.levels == ("u v", "w")
    names = brms_names(d)
    assert names["b"] == ("b_fab", "b_fc")  # brms drops spaces from coefficient names
    assert names["sd"] == ("sd_g__fab", "sd_g__fc")
    assert names["r"][:2] == ("r_g[u.v,fab]", "r_g[w,fab]")  # and writes '.' for spaces in levels


def test_group_level_design_columns(people):
    d = design("y ~ x + (1 + f || g)", people)
    assert d.z_names == ("Intercept", "fb", "fc")
    assert brms_names(d)["cor"] == ()  # uncorrelated
    d = design("y ~ x + (0 + f | g)", people)
    assert d.z_names == ("fa", "fb", "fc")
    d = design("y ~ 1 + (0 + x:Sex | g)", people)
    assert d.z_names == ("x:SexFemale", "x:SexMale")


def test_correlation_names_column_major_and_r_names_coefficient_slowest(people):
    frame = people.assign(z=np.arange(6.0))
    d = design("y ~ x + (1 + x + z | g)", frame)
    names = brms_names(d)
    assert names["cor"] == ("cor_g__Intercept__x", "cor_g__Intercept__z", "cor_g__x__z")
    assert names["r"] == tuple(f"r_g[{s},{c}]" for c in ("Intercept", "x", "z") for s in ("s1", "s2", "s3"))
    assert len(names["r"]) == d.Z.shape[1] * len(d.levels)


def test_single_coefficient_has_no_correlation(sleep):
    names = brms_names(design("Reaction ~ Days + (1 | Subject)", sleep))
    assert names["sd"] == ("sd_Subject__Intercept",) and names["cor"] == ()


def test_binomial_trials(people):
    frame = people.assign(k=[0, 1, 2, 3, 4, 5], n=[5, 5, 5, 5, 5, 5])
    d = design("k | trials(n) ~ x + (1 | g)", frame)
    assert d.trials.tolist() == [5] * 6 and d.trials.dtype == np.int64
    assert d.y.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_dict_input_equals_dataframe_input(people):
    a = design("y ~ x * Sex + (x | g)", people)
    b = design("y ~ x * Sex + (x | g)", people.to_dict(orient="list"))
    for name in ("y", "X", "Z", "group", "x_means"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.x_names, a.z_names, a.levels, a.info) == (b.x_names, b.z_names, b.levels, b.info)


def test_row_permutation_permutes_rows_only(people):
    order = np.array([3, 0, 5, 1, 4, 2])
    a = design("y ~ x * f + (1 + x | g)", people)
    b = design("y ~ x * f + (1 + x | g)", people.iloc[order])
    np.testing.assert_array_equal(a.X[order], b.X)
    np.testing.assert_array_equal(a.Z[order], b.Z)
    np.testing.assert_array_equal(a.group[order], b.group)
    assert a.levels == b.levels and a.x_names == b.x_names


def test_uncenter_intercept_matches_centred_linear_predictor(people):
    d = design("y ~ x * f + (1 | g)", people)
    rng = np.random.default_rng(1)
    b = rng.normal(size=(7, d.X.shape[1]))  # (draws, K)
    intercept_c = rng.normal(size=7)
    b_intercept = uncenter_intercept(intercept_c, b, d.x_means)
    assert b_intercept.shape == (7,)
    eta_centred = intercept_c[:, None] + b @ (d.X - d.x_means).T  # (draws, rows), as brms's Stan code
    np.testing.assert_allclose(b_intercept[:, None] + b @ d.X.T, eta_centred)
    assert np.ndim(uncenter_intercept(1.0, b[0], d.x_means)) == 0
    with pytest.raises(DataError, match=r"`b` must have shape \(..., K\)"):
        uncenter_intercept(intercept_c, b[:, :2], d.x_means)


def test_new_data_reuses_levels_and_allows_new_groups(people):
    d = design("y ~ x * f + (1 | g)", people)
    new = pd.DataFrame({"y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0], "f": ["c", "c", "b"], "g": ["n1", "n2", "n1"]})
    e = design("y ~ x * f + (1 | g)", new, reference=d.info)
    assert e.x_names == d.x_names and e.info == d.info
    assert e.levels == ("n1", "n2") and e.group.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(e.X, [[1.0, 0, 1, 0, 1], [2.0, 0, 1, 0, 2], [3.0, 1, 0, 3, 0]])


def test_new_data_with_unseen_factor_level(people):
    d = design("y ~ Sex + (1 | g)", people)
    new = pd.DataFrame({"y": [1.0, 2.0], "Sex": ["Male", "Other"], "g": ["a", "b"]})
    with pytest.raises(DataError, match=r"'Sex' has level\(s\) \['Other'\] .* known levels: \['Female', 'Male'\]"):
        design("y ~ Sex + (1 | g)", new, reference=d.info)


def test_new_data_checks_types_and_formula(people):
    d = design("y ~ x + (1 | g)", people)
    with pytest.raises(DataError, match="'x' was numeric when the model was built"):
        design("y ~ x + (1 | g)", people.assign(x=list("abcdef")), reference=d.info)
    with pytest.raises(SpecError, match="`reference` was built for 'y ~ 1 \\+ x \\+ \\(1 \\| g\\)'"):
        design("y ~ x + (x | g)", people, reference=d.info)


def test_design_info_json_round_trip(people):
    d = design("y ~ 0 + x * f + Sex + (1 + x || g)", people)
    info = DesignInfo.from_dict(json.loads(json.dumps(d.info.to_dict())))
    assert info == d.info
    e = build_design(info.terms, people, reference=info)
    np.testing.assert_array_equal(e.X, d.X)
    np.testing.assert_array_equal(e.Z, d.Z)


def test_design_info_from_bad_dict(people):
    good = design("y ~ f + (1 | g)", people).info.to_dict()
    with pytest.raises(SpecError, match=r"keys \['numeric'\] are missing"):
        DesignInfo.from_dict({k: v for k, v in good.items() if k != "numeric"})
    with pytest.raises(SpecError, match="do not match the columns"):
        DesignInfo.from_dict({**good, "x_names": ["fz"]})
    with pytest.raises(SpecError, match=r"predictors \['f'\] are neither"):
        DesignInfo.from_dict({**good, "factor_levels": {}})


@pytest.mark.parametrize(
    "formula, change, error, match",
    [
        ("y ~ z + w + (1 | g)", {}, DataError,
         r"variables \['z', 'w'\] used in the formula are not columns of `data`; available columns: \['y', 'x'"),
        ("y ~ x + (1 | g)", {"x": [1.0, None, np.nan, 4, 5, 6]}, DataError,
         r"'x' has 2 missing values \(first at row 1\).*never drops rows silently"),
        ("y ~ x + (1 | g)", {"g": ["a", None, "a", "b", "b", "b"], "y": [np.nan] + [1.0] * 5}, DataError,
         "'y' has 1 missing value .*'g' has 1 missing value"),
        ("y ~ x + (1 | g)", {"g": ["a"] * 6}, DataError,
         r"grouping factor 'g' has 1 level \['a'\] .* needs 2 or more groups"),
        ("y ~ Sex + (1 | g)", {"Sex": ["Male"] * 6}, DataError, r"factor 'Sex' has a single level \['Male'\]"),
        ("Sex ~ x + (1 | g)", {}, DataError, "the response 'Sex' must be numeric"),
        ("y ~ x + (1 | g)", {"x": [1.0, np.inf, 3, 4, 5, 6]}, DataError, "'x' has 1 infinite value"),
        ("y | trials(n) ~ x + (1 | g)", {"n": [5, 0, 5, 5, 2.5, 5]}, DataError,
         r"trials 'n' must be positive integers, got 2 other value\(s\) \(first 0 at row 1\)"),
        ("y | trials(n) ~ x + (1 | g)", {"n": [5, 5, 5, 5, 5, 5]}, DataError,
         r"'y' must count successes between 0 and trials 'n', got 1 other value\(s\) \(first 6 at row 5\)"),
        ("y | trials(n) ~ x + (1 | g)", {"n": list("abcdef")}, DataError, "trials 'n' must be numeric"),
        ("y ~ x", {}, SpecError, r"has no group-level term.*add one such as \(1 \| g\)"),
    ],
)  # fmt: skip
def test_data_errors(people, formula, change, error, match):
    with pytest.raises(error, match=match):
        design(formula, people.assign(**change))


def test_input_shape_errors():
    with pytest.raises(DataError, match="columns of equal length"):
        design("y ~ x + (1 | g)", {"y": [1.0, 2.0], "x": [1.0], "g": ["a", "b"]})
    with pytest.raises(DataError, match="`data` must be a pandas DataFrame or a dict"):
        design("y ~ x + (1 | g)", [[1.0, 2.0]])
    with pytest.raises(DataError, match=r"repeated column names \['x'\]"):
        design("y ~ x + (1 | g)", pd.DataFrame([[1.0, 2.0, 3.0, "a"]], columns=["y", "x", "x", "g"]))
    with pytest.raises(DataError, match="`data` has no rows"):
        design("y ~ x + (1 | g)", {"y": [], "x": [], "g": []})


def test_colliding_brms_names(people):
    frame = people.assign(f=["a b", "ab", "c", "a b", "ab", "c"])
    with pytest.raises(DataError, match=r"columns \['fa b', 'fab'\] get the same brms name"):
        design("y ~ 0 + f + (1 | g)", frame)


@pytest.mark.parametrize(
    "column, values, match",
    [("g", [1, 1, "1", "1", 2, 2], "column 'g' mixes numbers and other values \\(row 2: '1'\\)"),
     ("g", [0.1 + 0.2, 0.1 + 0.2, 0.3, 0.3, 1.0, 1.0], "distinct values 0.30000000000000004 and 0.3 that print alike"),
     ("g", ["a b", "a b", "a.b", "a.b", "c", "c"], "levels 'a b' and 'a.b', which brms names alike"),
     ("x", [1.0, 2.0, "3", 4.0, 5.0, 6.0], "column 'x' mixes numbers and other values \\(row 2: '3'\\)")],
)  # fmt: skip
def test_labels_are_kept_exactly_and_types_never_guessed(column, values, match):
    """Distinct group labels are never merged by formatting or by brms's names, and a numeric column with a stray
    string is an error naming the column and the row, not a factor with one level per value."""
    frame = pd.DataFrame({"y": np.arange(6.0), "x": np.arange(6.0), "g": list("aabbcc")})
    frame[column] = pd.Series(values, dtype=object)
    with pytest.raises(DataError, match=match):
        build_design(parse_formula("y ~ x + (1 | g)"), frame)


def test_zero_plus_intercept_is_a_column_of_ones_named_b_intercept(people):
    """brms's `0 + Intercept`: the intercept is the column Intercept of X (b_Intercept, not centred), and factors are
    coded as with an intercept (treatment contrasts, brms's validate_terms), not by cell means as after `0 +`."""
    d = design("y ~ 0 + Intercept + x + f + (1 | g)", people)
    assert d.x_names == ("Intercept", "x", "fb", "fc") and not d.intercept
    np.testing.assert_array_equal(d.X[:, 0], np.ones(6))
    np.testing.assert_array_equal(d.X[:, 1:], design("y ~ x + f + (1 | g)", people).X)
    assert brms_names(d)["b"] == ("b_Intercept", "b_x", "b_fb", "b_fc")
    later = design("y ~ 0 + x + Intercept + (1 | g)", people)  # formula order, as model.matrix
    assert later.x_names == ("x", "Intercept") and brms_names(later)["b"] == ("b_x", "b_Intercept")
    ones = design("y ~ 0 + Intercept + x + (1 | g)", people.assign(Intercept=1))  # brms's own column: fine
    np.testing.assert_array_equal(ones.X, d.X[:, :2])
    with pytest.raises(DataError, match=r"column 'Intercept' with values other than 1 \(first 2\).*ambiguous"):
        design("y ~ 0 + Intercept + x + (1 | g)", people.assign(Intercept=[1, 2, 1, 1, 1, 1]))
    info = DesignInfo.from_dict(json.loads(json.dumps(d.info.to_dict())))
    assert info == d.info and info.terms.intercept_coef


def test_offsets_are_evaluated_and_summed(people):
    frame = people.assign(e=[1.0, 2.0, 4.0, 8.0, 0.5, 3.0], a=np.arange(6.0) - 2.5)
    d = design("y ~ x + offset(log(e)) + offset(a / 2 - x^2) + (1 | g)", frame)
    expected = np.log(frame["e"]) + frame["a"] / 2 - frame["x"] ** 2
    np.testing.assert_allclose(d.offset, expected, rtol=1e-15)
    assert d.x_names == ("x",) and d.offset.shape == (6,)  # no coefficient for an offset
    assert design("y ~ x + (1 | g)", frame).offset is None
    functions = design("y ~ offset(log2(e) + log10(e) + log1p(e) + exp(-e) + sqrt(e)) + (1 | g)", frame).offset
    e = frame["e"].to_numpy()
    np.testing.assert_allclose(functions, np.log2(e) + np.log10(e) + np.log1p(e) + np.exp(-e) + np.sqrt(e))
    new = design("y ~ x + offset(log(e)) + (1 | g)", frame.iloc[:2], reference=design(
        "y ~ x + offset(log(e)) + (1 | g)", frame).info, min_groups=1)
    np.testing.assert_allclose(new.offset, np.log([1.0, 2.0]))


@pytest.mark.parametrize(
    "offset, e, match",
    [
        ("log(e)", [1.0, 0.0, -1.0, 1, 1, 1],
         r"offset\(log\(e\)\) takes log\(\) of 2 value\(s\) that are not positive \(first 0 at row 1\).*drop or fix"),
        ("sqrt(e)", [1.0, -4.0, 1, 1, 1, 1],
         r"sqrt\(\) of 1 value\(s\) that are not non-negative \(first -4 at row 1\)"),
        ("log1p(e)", [1.0, -1.0, 1, 1, 1, 1], "that are not greater than -1"),
        ("e", [1.0, np.inf, 1, 1, 1, 1],
         r"column 'e' of offset\(e\) has 1 infinite value\(s\) \(first inf at row 1\).*remove or fix those rows"),
        ("e", [1.0, np.nan, 1, 1, 1, 1], r"'e' has 1 missing value \(first at row 1\).*never drops rows"),
        ("log(e)", pd.Series(list("abcdef"), dtype=object),
         r"column 'e' of offset\(log\(e\)\) must be numeric, got dtype .* \(first value 'a'\)\. Convert it"),
        ("1 / (e - 1)", [1.0, 2.0, 1, 1, 1, 1],
         r"offset\(1/\(e - 1\)\) is not finite at 5 row\(s\) \(first inf at row 0\)"),
        ("exp(e)", [1.0, 1e4, 1, 1, 1, 1], r"offset\(exp\(e\)\) is not finite at 1 row\(s\) \(first inf at row 1\)"),
    ],
)  # fmt: skip
def test_offset_errors_name_the_offset_the_value_and_the_fix(people, offset, e, match):
    with pytest.raises(DataError, match=match):
        design(f"y ~ x + offset({offset}) + (1 | g)", people.assign(e=e))


def test_offset_columns_are_required(people):
    match = r"variables \['e'\] .* not columns of `data` \(offset\(log\(e\)\) is data: every dataset, `newdata` of "
    with pytest.raises(DataError, match=match + r"predictions too, needs its columns\)"):
        design("y ~ x + offset(log(e)) + (1 | g)", people)
