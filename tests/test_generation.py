"""CoCa caption search: token-for-token parity with open_clip 3.3.0 on a toy model, and the contracts
the model relies on (the `reorder` argument, seeded sampling, the top-k / top-p sets, config errors).

The toy model and the reference outputs come from tests/fixtures/make_generation_fixtures.py.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from paddlemix.models.coca.generation import GenerationConfig, generate_tokens

FIXTURE = Path(__file__).parent / "fixtures" / "generation_toy.npz"
SOT, EOS, PAD = 62, 63, 0


@pytest.fixture(scope="module")
def toy():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def toy_logits(toy, input_ids: np.ndarray, entries: np.ndarray, eos_bias: float = 0.0) -> np.ndarray:
    """float32 [N, V] logits of the token after each row: the fixture script's formula, last position only."""
    last = input_ids[:, -1]
    previous = input_ids[:, -2] if input_ids.shape[1] > 1 else np.full(len(input_ids), SOT)
    position = input_ids.shape[1] - 1
    logits = toy["table_a"][last] + toy["table_b"][position][None] + toy["table_c"][previous] + toy["table_d"][entries]
    logits[:, EOS] += np.float32(eos_bias)
    return logits


def row_entries(config: GenerationConfig, batch_size: int) -> np.ndarray:
    """The batch entry (the "image") of each row passed to step."""
    rows_per_entry = config.num_beams if config.generation_type == "beam_search" else 1
    return np.repeat(np.arange(batch_size), rows_per_entry)


def stateless_step(toy, config: GenerationConfig, batch_size: int, eos_bias: float = 0.0):
    entries = row_entries(config, batch_size)

    def step(input_ids, reorder):
        return toy_logits(toy, input_ids, entries, eos_bias)

    return step


class CachedStep:
    """A step that, like a model with a key/value cache, reads only the last column of input_ids and
    keeps each row's history itself, reordered by `reorder`. It asserts that the history it rebuilt is
    the rows it was given, then computes the toy logits from its own history."""

    def __init__(self, toy, config: GenerationConfig, batch_size: int, eos_bias: float):
        self.toy = toy
        self.entries = row_entries(config, batch_size)
        self.eos_bias = eos_bias
        self.history = None
        self.reordered = False

    def __call__(self, input_ids, reorder):
        if self.history is None:
            assert reorder is None
            self.history = input_ids.copy()
        else:
            if reorder is not None:
                self.reordered |= not np.array_equal(reorder, np.arange(len(reorder)))
                self.history = self.history[reorder]
            self.history = np.concatenate([self.history, input_ids[:, -1:]], axis=1)
        np.testing.assert_array_equal(self.history, input_ids)
        return toy_logits(self.toy, self.history, self.entries, self.eos_bias)


@dataclass
class FixtureCase:
    config: GenerationConfig
    batch_size: int
    prompt: Optional[np.ndarray]
    eos_bias: float
    expected: np.ndarray  # open_clip's output


def fixture_case(toy, name: str) -> FixtureCase:
    fields = json.loads(str(toy[f"{name}.config"]))
    batch_size = fields.pop("batch_size")
    eos_bias = fields.pop("eos_bias", 0.0)
    return FixtureCase(GenerationConfig(**fields), batch_size, toy.get(f"{name}.prompt"), eos_bias, toy[f"{name}.tokens"])


with np.load(FIXTURE) as fixture_file:
    CASE_NAMES = [str(name) for name in fixture_file["case_names"]]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_generate_tokens_equals_open_clip(toy, name):
    case = fixture_case(toy, name)
    step = stateless_step(toy, case.config, case.batch_size, case.eos_bias)
    tokens = generate_tokens(step, case.batch_size, case.config, case.prompt)
    assert tokens.dtype == np.int64
    np.testing.assert_array_equal(tokens, case.expected)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cached_step_rebuilds_every_row_from_the_last_column_and_reorder(toy, name):
    case = fixture_case(toy, name)
    step = CachedStep(toy, case.config, case.batch_size, case.eos_bias)
    tokens = generate_tokens(step, case.batch_size, case.config, case.prompt)
    np.testing.assert_array_equal(tokens, case.expected)
    config = case.config
    if config.generation_type == "beam_search" and config.num_beams > config.num_beam_groups:
        assert step.reordered, "beam search never moved a beam: the reorder contract was not exercised"


def test_group_beam_search_without_diversity_penalty_is_a_beam_search_of_group_size_beams(toy):
    # open_clip's groups all start alike and never see each other, so they run the same search
    grouped = GenerationConfig(seq_len=30, num_beams=6, num_beam_groups=3, sot_token_id=SOT, eos_token_id=EOS)
    plain = GenerationConfig(seq_len=30, num_beams=2, num_beam_groups=1, sot_token_id=SOT, eos_token_id=EOS)
    grouped_tokens = generate_tokens(stateless_step(toy, grouped, 3), 3, grouped)
    plain_tokens = generate_tokens(stateless_step(toy, plain, 3), 3, plain)
    np.testing.assert_array_equal(grouped_tokens, plain_tokens)


class RecordingStep:
    """Toy step over `batch_size` rows (row i shows entry i % 3) that records what it was given."""

    def __init__(self, toy, batch_size: int):
        self.toy = toy
        self.entries = np.arange(batch_size) % 3
        self.calls = []

    def __call__(self, input_ids, reorder):
        logits = toy_logits(self.toy, input_ids, self.entries)
        self.calls.append((input_ids.copy(), logits))
        return logits

    def sampled_steps(self, tokens: np.ndarray, seq_len: int):
        """(logits row, sampled token) for every sampled (not forced, not finished) row."""
        for input_ids, logits in self.calls:
            length = input_ids.shape[1]
            if length + 1 == seq_len:
                continue  # <end_of_text> forced
            running = (input_ids[:, -1] != EOS) & (input_ids[:, -1] != PAD)
            for row in np.nonzero(running)[0]:
                yield logits[row], tokens[row, length]


def sampling_config(**overrides) -> GenerationConfig:
    # min_seq_len=0 and no repetition penalty: the filtered scores are the raw logits
    fields = dict(generation_type="top_k", top_k=5, seq_len=20, min_seq_len=0, seed=0)
    fields.update(overrides)
    return GenerationConfig(sot_token_id=SOT, eos_token_id=EOS, pad_token_id=PAD, **fields)


def test_sampling_with_the_same_seed_repeats_and_another_seed_differs(toy):
    def sample(seed):
        return generate_tokens(RecordingStep(toy, 6), 6, sampling_config(seed=seed, temperature=2.0))

    first, again, other = sample(3), sample(3), sample(4)
    np.testing.assert_array_equal(first, again)
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_top_k_sampling_draws_only_from_the_k_best_tokens(toy):
    step = RecordingStep(toy, 12)
    config = sampling_config(top_k=5, temperature=3.0)
    tokens = generate_tokens(step, 12, config)
    ranks = []
    for logits, token in step.sampled_steps(tokens, config.seq_len):
        ranks.append(int((logits > logits[token]).sum()))
    assert len(ranks) > 50
    assert max(ranks) < 5
    assert len(set(ranks)) > 1, "top-k sampling only ever drew the best token"


def test_top_p_sampling_draws_only_from_the_nucleus(toy):
    step = RecordingStep(toy, 12)
    config = sampling_config(generation_type="top_p", top_p=0.6, temperature=3.0)
    tokens = generate_tokens(step, 12, config)
    outside_top1 = 0
    checked = 0
    for logits, token in step.sampled_steps(tokens, config.seq_len):
        probs = np.exp(logits.astype(np.float64) - logits.max())
        probs /= probs.sum()
        # in the nucleus: the tokens more probable than it hold less than top_p of the probability
        assert probs[probs > probs[token]].sum() < config.top_p
        outside_top1 += probs[token] < probs.max()
        checked += 1
    assert checked > 50
    assert outside_top1 > 0, "top-p sampling only ever drew the best token"


def test_small_temperature_makes_sampling_greedy(toy):
    greedy = fixture_case(toy, "greedy_b3")
    for generation_type in ("top_k", "top_p"):
        for seed in range(3):
            cold = replace(
                greedy.config, generation_type=generation_type, top_k=64, top_p=1.0, temperature=1e-6, seed=seed
            )
            tokens = generate_tokens(stateless_step(toy, cold, greedy.batch_size), greedy.batch_size, cold)
            np.testing.assert_array_equal(tokens, greedy.expected)


def test_sampling_stops_calling_the_model_once_every_row_ended(toy):
    case = fixture_case(toy, "greedy_b1_fixed_temperature")
    step = RecordingStep(toy, case.batch_size)
    tokens = generate_tokens(step, case.batch_size, case.config, case.prompt)
    np.testing.assert_array_equal(tokens, case.expected)
    eos_position = int(np.nonzero(case.expected[0] == EOS)[0][0])
    assert eos_position < case.config.seq_len - 1  # the fixture ends early and is padded
    assert [input_ids.shape[1] for input_ids, _ in step.calls] == list(range(1, eos_position + 1))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(generation_type="greedy"), "choose one of beam_search, top_k, top_p"),
        (dict(seq_len=5, min_seq_len=5), "seq_len=5 must be larger than min_seq_len=5"),
        (dict(seq_len=1, min_seq_len=0), "seq_len=1 must be >= 2"),
        (dict(min_seq_len=-1), "min_seq_len=-1"),
        (dict(num_beams=6, num_beam_groups=4), "num_beams=6 must be a multiple of num_beam_groups=4"),
        (dict(num_beams=1, num_beam_groups=1), "num_beams=1 must be >= 2"),
        (dict(top_k=0), "top_k=0 must be >= 1"),
        (dict(top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
        (dict(temperature=0.0), "temperature=0.0 must be > 0"),
        (dict(repetition_penalty=0.0), "repetition_penalty=0.0 must be > 0"),
    ],
)
def test_invalid_config_is_refused_with_the_field_named(fields, message):
    with pytest.raises(ValueError, match=message):
        GenerationConfig(**fields)


def test_invalid_config_changed_after_construction_is_refused_by_generate_tokens(toy):
    config = sampling_config()
    config.top_k = 0
    with pytest.raises(ValueError, match="top_k=0"):
        generate_tokens(RecordingStep(toy, 1), 1, config)


def test_beam_search_refuses_a_prompt(toy):
    config = GenerationConfig(sot_token_id=SOT, eos_token_id=EOS)
    with pytest.raises(ValueError, match="use generation_type='top_k' or 'top_p'"):
        generate_tokens(stateless_step(toy, config, 1), 1, config, prompt=np.array([[SOT, 5]]))


@pytest.mark.parametrize("prompt", [np.array([SOT, 5]), np.array([[SOT, 5]] * 2), np.full((1, 20), SOT)])
def test_sampling_refuses_a_prompt_of_the_wrong_shape(toy, prompt):
    with pytest.raises(ValueError, match=r"expected \[batch_size=1, P\] with 1 <= P < seq_len=20"):
        generate_tokens(RecordingStep(toy, 1), 1, sampling_config(), prompt=prompt)


def test_logits_of_the_wrong_shape_are_refused(toy):
    with pytest.raises(ValueError, match=r"expected \[3, vocab_size\]"):
        generate_tokens(lambda input_ids, reorder: np.zeros((1, 64), np.float32), 3, sampling_config())
