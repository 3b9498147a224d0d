"""Reconstruction metrics: optimal matching, PSNR / SSIM, label accuracy and the floor."""

from __future__ import annotations

import numpy as np

from privmed.metrics.reconstruction import label_accuracy, match, psnr_matrix, psnr_per_image, score


def test_matching_undoes_a_permutation_and_identical_images_score_high():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, (5, 1, 8, 8))
    perm = np.array([3, 0, 4, 1, 2])
    metrics = score(truth[perm], truth, input_range=(-1, 1), mean_image=truth.mean(0))
    assert metrics["psnr"]["min"] > 150 and metrics["ssim"]["min"] > 0.999
    assert metrics["above_floor"] == 5
    np.testing.assert_array_equal(perm[match(truth[perm], truth)], np.arange(5))


def test_psnr_of_a_known_error_and_the_floor():
    truth = np.zeros((2, 1, 16, 16))
    metrics = score(truth + 0.2, truth, input_range=(-1, 1), mean_image=np.full((1, 16, 16), 0.2))
    # error 0.1 on the unit scale -> 20 dB, and the mean image scores the same: not above the floor
    assert abs(metrics["psnr"]["mean"] - 20.0) < 1e-9 and metrics["above_floor"] == 0


def test_label_accuracy_ignores_order():
    assert label_accuracy(np.array([1, 0, 0]), np.array([0, 1, 1])) == 2 / 3
    assert label_accuracy(None, np.array([0])) is None


def test_a_few_reconstructions_in_a_pool_must_beat_the_mean_images_best_match():
    rng = np.random.default_rng(1)
    pool = rng.uniform(-1, 1, (20, 1, 16, 16))
    mean = pool.mean(0)
    guesses = np.stack([mean, mean])  # the mean image itself, matched into the pool, reveals nothing
    assert score(guesses, pool, input_range=(-1, 1), mean_image=mean)["above_floor"] == 0
    exact = score(pool[:2], pool, input_range=(-1, 1), mean_image=mean)
    assert exact["above_floor"] == 2 and exact["images"] == 2


def test_psnr_matrix_scores_every_pair_like_the_per_image_psnr():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (3, 1, 5, 5)), rng.uniform(0, 1, (4, 1, 5, 5))
    matrix = psnr_matrix(a, b)
    assert matrix.shape == (3, 4)
    for i in range(3):
        pairs = psnr_per_image(np.repeat(a[i : i + 1], 4, axis=0), b)
        np.testing.assert_allclose(matrix[i], pairs, rtol=1e-9)
    # the peak sets the scale: images in [-1, 1] have a range of 2, i.e. +6.02 dB for the same error
    np.testing.assert_allclose(psnr_matrix(a, b, peak=2.0) - matrix, 20 * np.log10(2.0))
    assert np.all(psnr_matrix(a, b[:0]) == -np.inf)
