"""Confident learning's driver-side maths on small matrices computed by hand."""

import numpy as np
import pytest

from jobs.analysis.audit import calibrate, estimate, noise_matrix, prune_counts, round_row_totals


def test_calibration_scales_each_row_to_its_class_count_then_normalises():
    confident = np.array([[6, 2], [1, 1]])  # row sums 8 and 2; 10 and 5 rows are labelled 0 and 1
    joint = calibrate(confident, np.array([10, 5]))
    # [[6*10/8, 2*10/8], [1*5/2, 1*5/2]] = [[7.5, 2.5], [2.5, 2.5]], over 15
    assert joint == pytest.approx(np.array([[0.5, 1 / 6], [1 / 6, 1 / 6]]))
    assert noise_matrix(joint) == pytest.approx(np.array([[0.75, 0.5], [0.25, 0.5]]))  # columns sum to 1


def test_estimate_noise_rates_and_prune_counts():
    est = estimate(["a", "b"], np.array([10, 5]), np.array([0.7, 0.6]), np.array([[6, 2], [1, 1]]))
    assert est.noise_rate == pytest.approx([0.25, 0.5])  # 1 - Q[i][i] / sum_j Q[i][j]
    # 15·Q = [[7.5, 2.5], [2.5, 2.5]]: row 0 rounds to [8, 2] (10, its total); row 1 to [2, 2] is one short of 5,
    # and the unit goes to the last of the two equal remainders, the diagonal: 2 off the diagonal in each row
    assert est.prune_counts == [[0, 2], [2, 0]]


def test_rows_keep_their_totals_where_rounding_each_cell_loses_them():
    # a 10-class row: nine cells of 3/8 round to 0 each and 6 5/8 to 7, 7 of its 10 rows; the 3 units missing go
    # to the largest remainders (3/8 each, the last three in a stable order), as cleanlab's rounding does
    row = np.array([[6.625, *[0.375] * 9]])
    assert round_row_totals(row).tolist() == [[7, 0, 0, 0, 0, 0, 0, 1, 1, 1]]
    assert np.rint(row).sum() == 7  # rounding each cell: no row off the diagonal
    # one unit too many (11 of 10) comes off the smallest remainder: 7.6 - 8 = -0.4 against 0.8 - 1 = -0.2
    assert round_row_totals(np.array([[7.6, 0.8, 0.8, 0.8]])).tolist() == [[7, 1, 1, 1]]
    # rint(1.5) = 2 twice is 4 of 3: the first of the two equal remainders gives the unit back
    assert round_row_totals(np.array([[2.0, 3.0], [1.5, 1.5]])).tolist() == [[2, 3], [1, 2]]


def test_prune_counts_leave_one_row_of_every_class():
    joint = calibrate(np.array([[0, 5], [0, 5]]), np.array([2, 8]))  # every row labelled 0 looks like a 1
    assert joint == pytest.approx(np.array([[0, 0.2], [0, 0.8]]))
    assert prune_counts(joint, np.array([2, 8])).tolist() == [[0, 1], [0, 0]]  # 2 wanted, 1 allowed


def test_a_class_without_confident_rows_calibrates_to_zero():
    joint = calibrate(np.array([[3, 0], [0, 0]]), np.array([3, 2]))
    assert joint == pytest.approx(np.array([[1.0, 0], [0, 0]]))
    assert noise_matrix(joint)[:, 1].tolist() == [0, 0]
