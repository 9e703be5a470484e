"""ActionTokenizer and NormStats against OpenVLA's rules, with expected values worked out by hand.

Bin edges are e_i = -1 + 2 i / 255 (i = 0..255); np.digitize returns i with e_{i-1} <= a < e_i (256 for
a = 1), the id is 32000 - i, and id k decodes to the centre c_j = -1 + (2 j + 1) / 255 with
j = clip(31999 - k, 0, 254).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vla_cl
from vla_cl.tokenizer import ActionTokenizer, NormStats

# (action, OpenVLA token id), each derived in the comment from the edge formula above.
HAND_PICKED = [
    (-1.0, 31999),  # a = e_0 -> i = 1
    (-3.0, 31999),  # clipped to -1
    (1.0, 31744),  # a = e_255 -> i = 256
    (7.5, 31744),  # clipped to 1
    (0.0, 31872),  # e_127 = -1/255 <= 0 < e_128 = 1/255 -> i = 128
    (0.5, 31808),  # (0.5 + 1) * 127.5 = 191.25 -> e_191 <= a < e_192 -> i = 192
    (-0.5, 31936),  # 0.5 * 127.5 = 63.75 -> i = 64
    (0.999, 31745),  # 1.999 * 127.5 = 254.87 -> i = 255
    (-0.999, 31999),  # 0.001 * 127.5 = 0.13 -> i = 1
]


def test_openvla_ids_for_hand_picked_actions():
    tokenizer = ActionTokenizer()
    actions = np.array([a for a, _ in HAND_PICKED])
    assert tokenizer.encode(actions).tolist() == [token for _, token in HAND_PICKED]


def test_exact_bin_edge_goes_to_the_upper_bin():
    # np.digitize (right=False) puts a value equal to e_128 in bin 129 -> id 31871.
    edge = np.linspace(-1, 1, 256)[128]
    assert ActionTokenizer().encode(np.array([edge, np.nextafter(edge, -1)])).tolist() == [31871, 31872]


def test_encode_keeps_shape_and_returns_int64():
    ids = ActionTokenizer().encode(np.zeros((4, 3, 7)))
    assert ids.shape == (4, 3, 7) and ids.dtype == np.int64


def test_decode_maps_ids_to_bin_centres():
    tokenizer = ActionTokenizer()
    ids = np.array([31999, 31872, 31745, 31744])
    expected = [-254 / 255, 0.0, 254 / 255, 254 / 255]  # c_0, c_127, c_254, and 31744 folds onto c_254
    np.testing.assert_allclose(tokenizer.decode(ids), expected, atol=1e-12)


def test_bin_ids_and_geometry():
    tokenizer = ActionTokenizer()
    assert tokenizer.bin_ids == range(31744, 32000)
    assert tokenizer.bins.shape == (256,) and tokenizer.bin_centers.shape == (255,)


def test_own_vocabulary_uses_ids_zero_to_n_bins():
    tokenizer = ActionTokenizer(vocab_size=256, n_bins=256)
    assert tokenizer.bin_ids == range(256)
    assert tokenizer.encode(np.array([-1.0, 0.0, 1.0])).tolist() == [255, 128, 0]
    np.testing.assert_allclose(
        tokenizer.decode(np.array([255, 128, 0])), [-254 / 255, 0.0, 254 / 255], atol=1e-12
    )


def test_every_id_but_the_folded_one_round_trips():
    tokenizer = ActionTokenizer()
    ids = np.arange(31745, 32000)
    np.testing.assert_array_equal(tokenizer.encode(tokenizer.decode(ids)), ids)
    assert tokenizer.encode(tokenizer.decode(np.array([31744]))).tolist() == [31745]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=16))
def test_round_trip_error_is_at_most_half_a_bin(values):
    tokenizer = ActionTokenizer()
    actions = np.array(values)
    decoded = tokenizer.decode(tokenizer.encode(actions))
    assert np.all(np.abs(decoded - actions) <= 1 / 255 + 1e-12)


STATS = {
    "bridge_orig": {
        "action": {
            "q01": [-0.1, -0.2, 0.0, 0.0],
            "q99": [0.3, 0.2, 2.0, 1.0],
            "mask": [True, True, True, False],
            "mean": [0.0, 0.0, 0.0, 0.5],
        },
        "proprio": {"q01": [0.0], "q99": [1.0]},
    }
}


def test_normalize_and_unnormalize_by_hand():
    stats = NormStats.from_checkpoint(STATS, "bridge_orig")
    # dim 0: 2 (0.1 + 0.1) / 0.4 - 1 = 0; dim 1: clipped to 1; dim 2: 2 * 0.5 / 2 - 1 = -0.5; gripper passes.
    np.testing.assert_allclose(stats.normalize([0.1, 0.9, 0.5, 0.7]), [0.0, 1.0, -0.5, 0.7], atol=1e-7)
    # 0.5 (a + 1)(q99 - q01) + q01: dim 0 -> q99, dim 1 -> q01, dim 2 -> 0.5; gripper passes.
    np.testing.assert_allclose(stats.unnormalize([1.0, -1.0, -0.5, -1.0]), [0.3, -0.2, 0.5, -1.0], atol=1e-12)


def test_normalize_inverts_unnormalize_on_a_batch():
    stats = NormStats(q01=np.array([-1.0, 0.0]), q99=np.array([3.0, 0.5]))
    normalised = np.random.default_rng(0).uniform(-1, 1, size=(5, 2))
    np.testing.assert_allclose(stats.normalize(stats.unnormalize(normalised)), normalised, atol=1e-7)


def test_stats_from_the_three_dict_layouts_agree():
    whole = NormStats.from_checkpoint(STATS, "bridge_orig")
    only_dataset = NormStats.from_checkpoint(STATS)  # one dataset: no key needed
    entry = NormStats.from_checkpoint(STATS["bridge_orig"])
    action = NormStats.from_checkpoint(STATS["bridge_orig"]["action"])
    for other in (only_dataset, entry, action):
        np.testing.assert_array_equal(other.q01, whole.q01)
        np.testing.assert_array_equal(other.mask, whole.mask)


def test_tokenizer_from_norm_stats_normalises_then_encodes():
    tokenizer = ActionTokenizer.from_norm_stats(STATS, "bridge_orig")
    raw = np.array([0.3, -0.2, 1.0, 1.0])  # q99, q01, the middle, gripper open
    # OpenVLA's +1e-8 in the denominator maps q99 to just below 1, i.e. id 31745, not 31744.
    assert tokenizer.encode(tokenizer.normalize(raw)).tolist() == [31745, 31999, 31872, 31744]
    np.testing.assert_allclose(tokenizer.unnormalize(tokenizer.normalize(raw)), raw, atol=1e-7)


def test_package_exposes_the_tokenizer():
    assert vla_cl.ActionTokenizer is ActionTokenizer


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda t: t.encode(np.array([0.0, np.nan])), ["actions", "nan", "(1,)"]),
        (lambda t: t.encode(np.array([0.0, 1.5]), strict=True), ["actions", "1.5", "strict"]),
        (lambda t: t.encode(np.array(["a"])), ["actions", "dtype"]),
        (lambda t: t.decode(np.array([31999, 31743])), ["ids", "31743", "31744"]),
        (lambda t: t.decode(np.array([32000])), ["ids", "32000"]),
        (lambda t: t.decode(np.array([31999.0])), ["ids", "integer"]),
        (lambda t: t.normalize(np.zeros(4)), ["stats"]),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, words):
    with pytest.raises(ValueError) as error:
        call(ActionTokenizer())
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"q01": [0.0, 0.0], "q99": [1.0]}, "q01"),
        ({"q01": [0.0], "q99": [1.0], "mask": [1]}, "mask"),
        ({"q01": [1.0], "q99": [0.0]}, "q99"),
        ({"q01": [np.inf], "q99": [1.0]}, "q01"),
    ],
)
def test_bad_stats_raise_naming_the_field(kwargs, word):
    with pytest.raises(ValueError, match=word):
        NormStats(**kwargs)


def test_bad_tokenizer_fields_raise():
    with pytest.raises(ValueError, match="n_bins"):
        ActionTokenizer(n_bins=1)
    with pytest.raises(ValueError, match="vocab_size"):
        ActionTokenizer(vocab_size=100, n_bins=256)
    with pytest.raises(ValueError, match="dataset"):
        NormStats.from_checkpoint({"a": STATS["bridge_orig"], "b": STATS["bridge_orig"]})
    with pytest.raises(ValueError, match="last dimension"):
        NormStats.from_checkpoint(STATS).normalize(np.zeros(3))
