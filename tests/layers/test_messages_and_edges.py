"""Error messages and edge cases of the GPT-2 layers that the mutation run found unpinned.

Each test here kills surviving mutants of docs/mutation-testing.md's layer run:
a layer's checks must name the argument that is wrong (not another, not none),
list at most five offending ids and only offending ones, accept an integer
upstream scalar, and keep layer norm's default epsilon at GPT-2's 1e-5.
"""

import re

import numpy as np
import pytest

from numgpt.layers import (attention_forward, embedding_forward, layernorm_forward, linear_forward,
                           softmax_cross_entropy_backward, softmax_cross_entropy_forward)


def test_mixed_dtypes_are_refused_with_the_whole_message():
    x = np.ones((2, 3), np.float32)
    w = np.ones((3, 4), np.float64)
    with pytest.raises(TypeError, match=r"^w has dtype float64 but x has dtype float32; all floating inputs "
                                        r"of a layer must share one dtype$"):
        linear_forward(x, w)


def test_linear_names_both_feature_counts():
    with pytest.raises(ValueError, match=re.escape("x has 3 input features (shape (2, 5, 3)) but w expects 4 "
                                                   "(w shape (4, 6), stored (in, out))")):
        linear_forward(np.ones((2, 5, 3)), np.ones((4, 6)))


@pytest.mark.parametrize("shape", [(2, 0, 12), (2, 3, 0)], ids=["no-position", "no-feature"])
def test_attention_refuses_an_empty_position_or_feature_axis(shape):
    with pytest.raises(ValueError, match="at least one position and one feature"):
        attention_forward(np.ones(shape), 2)


def test_embedding_checks_wpe_by_name():
    idx = np.zeros((1, 2), np.int64)
    wte = np.ones((5, 4))
    with pytest.raises(ValueError, match=r"^wpe must have 2 dimensions, got shape \(8,\)$"):
        embedding_forward(idx, wte, np.ones(8))
    with pytest.raises(TypeError, match=r"^wpe must have a floating dtype"):
        embedding_forward(idx, wte, np.ones((8, 4), np.int64))


def test_embedding_lists_only_the_ids_out_of_range():
    idx = np.array([[0, 0, -1, 5, 1, 6, 7, 8, 9, 10]])       # zeros and ones are fine, 7 ids are not
    with pytest.raises(ValueError, match=re.escape("e.g. [-1, 5, 6, 7, 8]")):
        embedding_forward(idx, np.ones((5, 4)), np.ones((16, 4)))


def test_cross_entropy_lists_at_most_five_bad_targets():
    targets = np.array([7, 8, 9, 10, 11, 12, 0])
    with pytest.raises(ValueError, match=re.escape("e.g. [7, 8, 9, 10, 11]")):
        softmax_cross_entropy_forward(np.zeros((7, 3)), targets)


def test_cross_entropy_backward_takes_an_integer_upstream_scalar_and_names_a_missing_cache():
    logits = np.random.default_rng(0).standard_normal((4, 5))
    targets = np.array([1, -1, 3, 0])
    _, cache = softmax_cross_entropy_forward(logits, targets)
    np.testing.assert_allclose(softmax_cross_entropy_backward(2, cache),
                               2.0 * softmax_cross_entropy_backward(1.0, cache))
    with pytest.raises(TypeError, match=r"^softmax_cross_entropy_backward needs the cache returned by the "
                                        r"forward$"):
        softmax_cross_entropy_backward(1.0)


def test_layernorm_checks_bias_by_name():
    x, w = np.ones((2, 4)), np.ones(4)
    with pytest.raises(ValueError, match=r"^bias must have 1 dimensions, got shape \(1, 4\)$"):
        layernorm_forward(x, w, np.ones((1, 4)))
    with pytest.raises(TypeError, match=r"^bias must be a numpy.ndarray"):
        layernorm_forward(x, w, [0.0] * 4)


def test_layernorm_default_epsilon_is_gpt2s():
    # Rows whose variance is comparable to eps show it: (x - mean) / sqrt(var + 1e-5).
    x = np.array([[0.0, 0.002, 0.004, 0.006]])
    out, _ = layernorm_forward(x, np.ones(4), np.zeros(4))
    centred = x - x.mean()
    np.testing.assert_allclose(out, centred / np.sqrt(centred.var() + 1e-5), rtol=1e-12)
