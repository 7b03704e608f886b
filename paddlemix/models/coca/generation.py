"""Caption search for CoCa (beam search, top-k / top-p sampling), token for token as open_clip 3.3.0.

The search is plain numpy and calls back into the model through `step` (see `generate_tokens`).
It reproduces what open_clip's `CoCa.generate` does with transformers 4.57, quirks included:

- Beam search is HuggingFace *group* beam search without a diversity penalty: every group starts
  from <start_of_text> with the same scores, so the groups run the same search and
  (num_beams=6, num_beam_groups=3) is a 2-beam search done three times.
- Beam scores are sums of the processed raw logits (no log-softmax), in float32; a finished
  hypothesis scores `sum / length` as a Python float, length counting <start_of_text> and <end_of_text>.
- Min-length (no <end_of_text> while the row is shorter than `min_seq_len`) and repetition
  penalty apply to beam search and sampling alike; temperature divides after top-k / top-p.
- A finished beam-search caption has <end_of_text> appended only when shorter than the longest
  one; a caption that ran to `seq_len` has none.
- Sampling ends a row at <end_of_text> *or at the pad token* (for CLIP's tokenizer pad is 0,
  which is also the token "!"), forces <end_of_text> as the last of `seq_len` tokens, and pads
  the rows that ended.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

GENERATION_TYPES = ("beam_search", "top_k", "top_p")

# step(input_ids int64 [N, L], reorder int64 [N] or None) -> float32 logits [N, vocab] for position L.
StepFn = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]

# open_clip starts every beam but the first of each group at this score, so that the first step
# expands the first beam only.
_INACTIVE_BEAM_SCORE = -1e9


@dataclass
class GenerationConfig:
    """How to search; the defaults are open_clip's `CoCa.generate` defaults."""

    generation_type: str = "beam_search"  # 'beam_search' | 'top_k' | 'top_p'
    seq_len: int = 30  # maximum length of the output, <start_of_text> (or the prompt) included
    min_seq_len: int = 5  # no <end_of_text> while a row is shorter than this
    temperature: float = 1.0  # sampling only
    top_k: int = 1  # 'top_k' only
    top_p: float = 0.1  # 'top_p' only: keep the most probable tokens holding this much probability
    num_beams: int = 6
    num_beam_groups: int = 3
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the row
    fixed_output_length: bool = False  # right-pad the output with pad_token_id to seq_len
    seed: Optional[int] = None  # sampling: same seed -> same captions
    sot_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that open_clip would refuse or that cannot work."""
        if self.generation_type not in GENERATION_TYPES:
            raise ValueError(
                f"GenerationConfig.generation_type={self.generation_type!r}; choose one of {', '.join(GENERATION_TYPES)}"
            )
        if self.min_seq_len < 0:
            raise ValueError(f"GenerationConfig.min_seq_len={self.min_seq_len} must be >= 0")
        if self.seq_len < 2:
            raise ValueError(
                f"GenerationConfig.seq_len={self.seq_len} must be >= 2: <start_of_text> and at least one token"
            )
        if self.seq_len <= self.min_seq_len:
            raise ValueError(
                f"GenerationConfig.seq_len={self.seq_len} must be larger than min_seq_len={self.min_seq_len}"
            )
        if self.num_beams < 2:
            raise ValueError(
                f"GenerationConfig.num_beams={self.num_beams} must be >= 2; for greedy decoding use "
                "generation_type='top_k' with top_k=1"
            )
        if self.num_beam_groups < 1 or self.num_beams % self.num_beam_groups != 0:
            raise ValueError(
                f"GenerationConfig.num_beams={self.num_beams} must be a multiple of "
                f"num_beam_groups={self.num_beam_groups} (>= 1)"
            )
        if self.top_k < 1:
            raise ValueError(f"GenerationConfig.top_k={self.top_k} must be >= 1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationConfig.top_p={self.top_p} must be in (0, 1]")
        if not self.temperature > 0.0:
            raise ValueError(f"GenerationConfig.temperature={self.temperature} must be > 0")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"GenerationConfig.repetition_penalty={self.repetition_penalty} must be > 0")


def generate_tokens(
    step: StepFn, batch_size: int, config: GenerationConfig, prompt: Optional[np.ndarray] = None
) -> np.ndarray:
    """Search captions; returns int64 [batch_size, length] token ids, <start_of_text> first.

    `step(input_ids, reorder)` returns the model's float32 logits [N, vocab] for the token after
    the last position of each row of `input_ids` (int64 [N, L]). Every call's rows extend the
    previous call's rows, taken in the order `reorder` gives, by exactly one token, so a model
    with a key/value cache needs only the last column: `reorder[i]` is the row of the previous
    call that row i continues (reorder the cache with it); `reorder` is None on the first call
    and whenever rows keep their order.

    - beam search: N = batch_size * num_beams, the beams of one batch entry adjacent (the order
      of `repeat_interleave(images, num_beams)`); `reorder` is an array on every call after the
      first. Rows of a batch entry whose search has ended keep their place and grow by pad.
    - sampling: N = batch_size, `reorder` always None. Rows that ended are passed on, extended
      with pad, and their logits are ignored; once every row has ended `step` is not called again.

    `prompt` (sampling only): int64 [batch_size, P] with 1 <= P < seq_len, the start of every
    caption, used as given (begin it with <start_of_text>); None starts from <start_of_text>.
    Output length: beam search up to seq_len; sampling up to seq_len, the prompt included;
    exactly seq_len with `fixed_output_length`.
    """
    config.validate()
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if config.generation_type == "beam_search":
        if prompt is not None:
            raise ValueError(
                "a prompt cannot start a beam search (open_clip ignores it); "
                "use generation_type='top_k' or 'top_p' to continue a prompt"
            )
        tokens = _beam_search(step, batch_size, config)
    else:
        tokens = _sample(step, batch_size, config, _start_tokens(batch_size, config, prompt))
    if config.fixed_output_length and tokens.shape[1] < config.seq_len:
        padding = np.full((batch_size, config.seq_len - tokens.shape[1]), config.pad_token_id, dtype=np.int64)
        tokens = np.concatenate([tokens, padding], axis=1)
    return tokens


def _start_tokens(batch_size: int, config: GenerationConfig, prompt: Optional[np.ndarray]) -> np.ndarray:
    if prompt is None:
        return np.full((batch_size, 1), config.sot_token_id, dtype=np.int64)
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[0] != batch_size or not 1 <= prompt.shape[1] < config.seq_len:
        raise ValueError(
            f"prompt has shape {prompt.shape}; expected [batch_size={batch_size}, P] with 1 <= P < "
            f"seq_len={config.seq_len}"
        )
    if not np.issubdtype(prompt.dtype, np.integer):
        raise ValueError(f"prompt has dtype {prompt.dtype}; expected integer token ids")
    return prompt.astype(np.int64)


def _call_step(step: StepFn, input_ids: np.ndarray, reorder: Optional[np.ndarray]) -> np.ndarray:
    logits = np.asarray(step(input_ids, reorder), dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"step returned logits of shape {logits.shape}; expected [{input_ids.shape[0]}, vocab_size] "
            f"for input_ids of shape {input_ids.shape}"
        )
    return logits


def _process_logits(input_ids: np.ndarray, logits: np.ndarray, config: GenerationConfig) -> np.ndarray:
    """HF's MinLengthLogitsProcessor then RepetitionPenaltyLogitsProcessor, in float32 as torch computes them."""
    scores = logits.copy()
    if input_ids.shape[1] < config.min_seq_len:
        scores[:, config.eos_token_id] = -np.inf
    rows = np.arange(len(input_ids))[:, None]
    seen = scores[rows, input_ids]
    penalty = np.float32(config.repetition_penalty)
    scores[rows, input_ids] = np.where(seen < 0, seen * penalty, seen / penalty)
    return scores


# ----------------------------------------------------------------------------------------------
# Beam search


class _Hypotheses:
    """The best finished captions of one beam group of one batch entry (HF's BeamHypotheses with
    length_penalty=1, early_stopping=False), kept in HF's list order so that ties resolve alike."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: List[Tuple[float, np.ndarray]] = []  # (score per token, tokens)
        self.worst_score = 1e9

    def add(self, tokens: np.ndarray, score_sum: float, length: int) -> None:
        score = score_sum / float(length)
        if len(self.entries) < self.capacity or score > self.worst_score:
            self.entries.append((score, tokens))
            if len(self.entries) > self.capacity:
                ranked = sorted((entry_score, index) for index, (entry_score, _) in enumerate(self.entries))
                del self.entries[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_score_sum: float, length: int) -> bool:
        """Full, and no running beam's score per token beats the worst kept caption (HF's heuristic)."""
        return len(self.entries) >= self.capacity and self.worst_score >= best_score_sum / float(length)


def _top_candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest scores, best first, equal scores by index."""
    chosen = np.argpartition(-scores, count - 1)[:count]
    return chosen[np.lexsort((chosen, -scores[chosen]))]


def _beam_search(step: StepFn, batch_size: int, config: GenerationConfig) -> np.ndarray:
    num_beams, num_groups = config.num_beams, config.num_beam_groups
    group_size = num_beams // num_groups
    num_rows = batch_size * num_beams
    tokens = np.full((num_rows, 1), config.sot_token_id, dtype=np.int64)
    beam_scores = np.full((batch_size, num_beams), _INACTIVE_BEAM_SCORE, dtype=np.float32)
    beam_scores[:, ::group_size] = 0.0
    beam_scores = beam_scores.reshape(-1)
    hypotheses = [[_Hypotheses(group_size) for _ in range(num_groups)] for _ in range(batch_size)]
    done = np.zeros((batch_size, num_groups), dtype=bool)

    reorder = None
    while True:
        logits = _call_step(step, tokens, reorder)
        vocab_size = logits.shape[1]
        reorder = np.arange(num_rows, dtype=np.int64)
        next_tokens = np.full(num_rows, config.pad_token_id, dtype=np.int64)
        length = tokens.shape[1] + 1  # of a caption ending here, <end_of_text> included
        for group in range(num_groups):
            # rows[b, j]: beam j of this group for batch entry b
            rows = np.arange(batch_size)[:, None] * num_beams + group * group_size + np.arange(group_size)
            flat_rows = rows.reshape(-1)
            processed = _process_logits(tokens[flat_rows], logits[flat_rows], config)
            candidates = (processed + beam_scores[flat_rows][:, None]).reshape(batch_size, group_size * vocab_size)
            for entry in range(batch_size):
                if done[entry, group]:
                    continue
                ranked = _top_candidates(candidates[entry], 2 * group_size)
                kept = 0
                for rank, candidate in enumerate(ranked):
                    source_row = rows[entry, candidate // vocab_size]
                    token = candidate % vocab_size
                    score = candidates[entry, candidate]
                    if token == config.eos_token_id:
                        if rank < group_size:
                            hypotheses[entry][group].add(tokens[source_row].copy(), float(score), length)
                    else:
                        target_row = rows[entry, kept]
                        beam_scores[target_row] = score
                        next_tokens[target_row] = token
                        reorder[target_row] = source_row
                        kept += 1
                        if kept == group_size:
                            break
                best_score = float(candidates[entry, ranked[0]])
                done[entry, group] = hypotheses[entry][group].is_done(best_score, length)
        tokens = np.concatenate([tokens[reorder], next_tokens[:, None]], axis=1)
        if done.all() or tokens.shape[1] >= config.seq_len:
            break

    for entry in range(batch_size):
        for group in range(num_groups):
            if not done[entry, group]:
                for row in entry * num_beams + group * group_size + np.arange(group_size):
                    hypotheses[entry][group].add(tokens[row].copy(), float(beam_scores[row]), tokens.shape[1])
    return _best_captions(hypotheses, config)


def _best_captions(hypotheses: List[List[_Hypotheses]], config: GenerationConfig) -> np.ndarray:
    """HF's BeamSearchScorer.finalize: the best caption of each entry, <end_of_text> appended
    where it is shorter than the output, pad after it."""
    best = []
    for groups in hypotheses:
        entries = [entry for group in groups for entry in group.entries]
        # sorted() is stable and HF pops the last: of equal scores, the last entry wins
        best.append(sorted(entries, key=lambda entry: entry[0])[-1][1])
    width = min(max(len(caption) for caption in best) + 1, config.seq_len)
    output = np.full((len(best), width), config.pad_token_id, dtype=np.int64)
    for row, caption in enumerate(best):
        output[row, : len(caption)] = caption
        if len(caption) < width:
            output[row, len(caption)] = config.eos_token_id
    return output


# ----------------------------------------------------------------------------------------------
# Sampling


def _top_k_filter(scores: np.ndarray, top_k: int) -> np.ndarray:
    """HF's TopKLogitsWarper: -inf below the k-th largest score (ties with it stay)."""
    top_k = min(top_k, scores.shape[1])
    kth_largest = np.partition(scores, scores.shape[1] - top_k, axis=1)[:, -top_k, None]
    return np.where(scores < kth_largest, np.float32(-np.inf), scores)


def _softmax64(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(scores / temperature) in float64; the max is subtracted first so that a tiny
    temperature gives the argmax probability 1 rather than inf / inf."""
    scores = scores.astype(np.float64)
    exponentials = np.exp((scores - scores.max(axis=1, keepdims=True)) / temperature)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _top_p_filter(scores: np.ndarray, top_p: float) -> np.ndarray:
    """HF's TopPLogitsWarper: keep a token when the tokens more probable than it hold less than
    top_p of the probability (the most probable token always stays); float64, ties by token id."""
    probs = _softmax64(scores)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs
    keep = np.zeros_like(probs, dtype=bool)
    np.put_along_axis(keep, order, mass_before < top_p, axis=1)
    return np.where(keep, scores, np.float32(-np.inf))


def _draw(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One token per row of `probs` (float64, rows sum to 1); a zero-probability token is never drawn."""
    cumulative = np.cumsum(probs, axis=1)
    thresholds = rng.random(len(probs)) * cumulative[:, -1]  # strictly below each row's total
    return (cumulative <= thresholds[:, None]).sum(axis=1).astype(np.int64)


def _sample(step: StepFn, batch_size: int, config: GenerationConfig, tokens: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(config.seed)
    while True:
        last = tokens[:, -1]
        running = (last != config.eos_token_id) & (last != config.pad_token_id)
        if not running.any():
            break
        logits = _call_step(step, tokens, None)
        next_tokens = np.full(batch_size, config.pad_token_id, dtype=np.int64)
        if tokens.shape[1] + 1 == config.seq_len:
            next_tokens[running] = config.eos_token_id
        else:
            scores = _process_logits(tokens[running], logits[running], config)
            if config.generation_type == "top_k":
                scores = _top_k_filter(scores, config.top_k)
            else:
                scores = _top_p_filter(scores, config.top_p)
            next_tokens[running] = _draw(rng, _softmax64(scores, config.temperature))
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
        if tokens.shape[1] >= config.seq_len:
            break
    return tokens
