"""Key-token attribution for a batch of sampled responses (paper Sec. 3.1-3.2): the one place where the
perturbations meet the model forward. Used by the trainer, by analysis tools and by benchmarks.

`attribute` runs the vision tower once per unique video, builds the visually perturbed and temporally
perturbed encoder outputs, and evaluates both (and, if the caller has no log-probs yet, the unperturbed
input) in ONE batched no-grad forward. It returns per-token scores per signal with the set of positions
where each score is defined: a response whose prompt has no video has no visual or temporal score at all
(excluded from those signals, never zero-scored). `select_key_tokens` turns scores into the key-token mask
(top r% per signal, union) or soft weights, with the statistics the trainer logs.

Batch layout (TRL's): prompt_ids [B, P] left-padded, completion_ids [B, C] right-padded; videos belong to
rows in order of appearance of their placeholder runs (`video_grid_thw` [V, 3], `second_per_grid_ts` [V]).
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .core import (
    CONTROLS,
    DISTANCES,
    WEIGHTINGS,
    control_mask,
    global_top_ratio_mask,
    group_top_ratio_mask,
    lm_head_distribution_distance,
    lm_head_logprobs,
    logprob_shift,
    quantile_threshold_mask,
    selection_stats,
    soft_token_weights,
    top_ratio_mask,
    union_masks,
)
from .models.adapters import adapter_for, unique_items
from .models.perturb import (
    TEMPORAL_STRATEGIES,
    VISUAL_STRATEGIES,
    permute_groups,
    replace_features,
    temporal_permutation,
    zero_features,
    zero_fraction,
)

SIGNALS = ("visual", "temporal", "entropy")
# Families whose decoder continues a cached prompt with text positions `valid index + rope delta` (checked against
# the unshared forward in tests/test_attribution.py).
PREFIX_SHARING_FAMILIES = ("qwen2_5_vl", "qwen2_vl")
SELECTION_SCOPES = ("response", "group", "global", "quantile")


@dataclass
class AttributionOptions:
    """How scores are computed (paper Sec. 3.1, RQ5, RQ7). Field docs are the config help strings."""

    signals: tuple[str, ...] = ("visual", "temporal", "entropy")
    visual_strategy: str = "zero"  # see models.perturb.VISUAL_STRATEGIES
    visual_fraction: float = 0.5  # share of visual tokens zeroed by "zero_fraction"
    temporal_strategy: str = "shuffle"  # see models.perturb.TEMPORAL_STRATEGIES
    segment_groups: int = 2  # temporal groups per segment for "segment"
    temporal_samples: int = 1  # temporal score = mean over this many independent permutation draws (rows x K)
    distance: str = "logprob"  # "logprob" (|Δ log p|, paper) or a full-distribution distance in core.DISTANCES
    signed: bool = False  # official code: logp_full - logp_perturbed without the absolute value
    temperature: float = 1.0  # logits are divided by this before log-softmax (match the sampling temperature)
    chunk_size: int = 1024  # rows per chunk when applying the LM head
    share_prefix: bool = True  # evaluate each distinct (prompt, perturbed video) once and reuse its KV cache

    def validate(self) -> None:
        bad = [s for s in self.signals if s not in SIGNALS]
        if bad or not self.signals:
            raise ValueError(f"signals must be a non-empty subset of {SIGNALS}, got {list(self.signals)}")
        if self.visual_strategy not in VISUAL_STRATEGIES:
            raise ValueError(f"visual_strategy must be one of {VISUAL_STRATEGIES}, got {self.visual_strategy!r}")
        if self.temporal_strategy not in TEMPORAL_STRATEGIES:
            raise ValueError(
                f"temporal_strategy must be one of {TEMPORAL_STRATEGIES}, got {self.temporal_strategy!r}")
        if self.distance != "logprob" and self.distance not in DISTANCES:
            raise ValueError(f"distance must be 'logprob' or one of {DISTANCES}, got {self.distance!r}")
        if self.signed and self.distance != "logprob":
            raise ValueError("signed=True only applies to distance='logprob'")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (isinstance(self.temporal_samples, int) and self.temporal_samples >= 1):
            raise ValueError(f"temporal_samples must be an integer >= 1, got {self.temporal_samples!r}")


@dataclass
class Attribution:
    """Per-token results for B responses of up to C tokens.

    scores[s] [B, C] float32: the score of signal s; valid[s] [B, C] bool: where it is defined.
    logp [B, C]: log-probability of each response token under the unperturbed input; entropy [B, C] or None.
    """

    scores: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    logp: torch.Tensor
    entropy: torch.Tensor | None
    seconds: float
    permutations: list[torch.Tensor] = field(default_factory=list)  # temporal permutation per video (first draw)
    permutation_draws: list[list[torch.Tensor]] = field(default_factory=list)  # per draw (temporal_samples)
    # with distance="logprob": log-probability of each response token under the visually / temporally perturbed
    # input [B, C] (meaningful where valid[signal]; 0 elsewhere), as computed for the score (temporal_samples > 1:
    # the mean over the draws)
    perturbed_logp: dict[str, torch.Tensor] = field(default_factory=dict)


def _media_per_row(prompt_ids: torch.Tensor, token_id: int, grid_thw: torch.Tensor, merge: int,
                   kind: str = "video") -> list[list[int]]:
    """Which videos (or images: indices into grid_thw) belong to each row: placeholder counts consumed in order."""
    tokens_per_video = (grid_thw.prod(-1) // merge**2).tolist()
    counts = (prompt_ids == token_id).sum(-1).tolist()
    rows, v = [], 0
    for b, n in enumerate(counts):
        mine = []
        while n > 0:
            if v >= len(tokens_per_video):
                raise ValueError(f"row {b} has more {kind} placeholder tokens than the batch has {kind} features")
            mine.append(v)
            n -= tokens_per_video[v]
            v += 1
        if n != 0:
            raise ValueError(f"row {b}: {kind} placeholder count does not match {kind}_grid_thw")
        rows.append(mine)
    if v != len(tokens_per_video):
        raise ValueError(f"batch has {len(tokens_per_video)} {kind}s but placeholders for {v}")
    return rows


def perturbed_features(
    features: list[torch.Tensor],
    groups: list[int],
    kind: str,
    options: AttributionOptions,
    generator: torch.Generator | None,
    donors: Sequence = (),
    owner: list[int] | None = None,
    keys: Sequence | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Perturb each video's features (one draw per unique video, shared by its copies).

    features: per video [N_v, D]; groups: temporal groups per video; owner[v]: index of the first identical
    video; keys[v]: what identifies video v's clip (default: its owner). donors (visual_strategy "replace"):
    features of other clips, each a tensor or a (key, tensor) pair; a donor whose key is the video's own is
    never used for it, so "replace" never swaps a clip for itself. Returns (perturbed features per video,
    temporal permutation per video (identity for visual)).
    """
    owner = owner if owner is not None else list(range(len(features)))
    keys = list(keys) if keys is not None else list(owner)
    keyed_donors = [d if isinstance(d, tuple) else (None, d) for d in donors]
    out: dict[int, torch.Tensor] = {}
    perms: dict[int, torch.Tensor] = {}
    for v in sorted(set(owner)):
        f = features[v]
        perm = torch.arange(groups[v])
        if kind == "temporal":
            perm = temporal_permutation(groups[v], options.temporal_strategy, generator, options.segment_groups)
            out[v] = permute_groups(f, groups[v], perm)
        elif options.visual_strategy == "zero":
            out[v] = zero_features(f)
        elif options.visual_strategy == "zero_fraction":
            out[v] = zero_fraction(f, options.visual_fraction, generator)
        else:  # replace: another unique video of this batch, else a donor from earlier batches
            others = [features[u] for u in sorted(set(owner)) if u != v and keys[u] != keys[v]]
            others += [d for k, d in keyed_donors if k is None or k != keys[v]]
            if not others:
                raise ValueError(
                    "visual_strategy='replace' needs another clip: the batch has one unique clip and no donor "
                    "features of another clip were given (the trainer keeps a bank of earlier batches' features)")
            pick = int(torch.randint(len(others), (1,), generator=generator))
            out[v] = replace_features(f, others[pick])
        perms[v] = perm
    return [out[o] for o in owner], [perms[o] for o in owner]


def _media_forward_kwargs(adapter, row_videos: list[list[tuple]], row_images: list[list[tuple]] | None = None) -> dict:
    """Forward kwargs for forward rows whose videos are given as (features, grid [3], seconds or None) tuples
    and whose images as (features, grid [3]) tuples."""
    flat = [v for videos in row_videos for v in videos]
    flat_images = [i for images in (row_images or []) for i in images]
    if not flat and not flat_images:
        return {}
    kwargs = adapter.media_kwargs([f for f, _, _ in flat], [f for f, _ in flat_images])
    if flat:
        kwargs["video_grid_thw"] = torch.stack([g for _, g, _ in flat])
        if flat[0][2] is not None:
            kwargs["second_per_grid_ts"] = torch.stack([s for _, _, s in flat])
    if flat_images:
        kwargs["image_grid_thw"] = torch.stack([g for _, g in flat_images])
    return kwargs


def _forward_shared_prefix(model, adapter, prompt_ids, prompt_mask, completion_ids, completion_mask, rows,
                           prefix_of, row_videos, row_images) -> torch.Tensor:
    """Hidden states predicting each completion token [R, C, H] for forward rows `rows` (batch indices), where
    rows with equal `prefix_of` share their prompt and video: the prompt prefixes run once (U rows) with a KV
    cache, the cache is gathered to the R rows, and only the completions run per row. The G responses to one
    prompt then cost one prompt pass per perturbation instead of G."""
    from transformers import DynamicCache

    device = prompt_ids.device
    uniq = sorted(set(prefix_of))  # positions in `rows` of the first row of each prefix
    u_index = {u: i for i, u in enumerate(uniq)}
    u_rows = torch.tensor([rows[u] for u in uniq], device=device)
    p_ids, p_mask = prompt_ids[u_rows], prompt_mask[u_rows]
    kwargs = _media_forward_kwargs(adapter, [row_videos[u] for u in uniq], [row_images[u] for u in uniq])
    take = torch.tensor([u_index[u] for u in prefix_of], device=device)  # [R] row -> its prefix
    C = completion_ids.shape[1]
    steps = torch.arange(1, C + 1, device=device)[None]  # [1, C]
    prompt_positions = None
    if "video_grid_thw" in kwargs or "image_grid_thw" in kwargs:
        # computed once, here, and given to the prefix pass: completion token t continues the prompt's text at its
        # last token's position + 1 + t, where the positions are those the model gives the whole sequence in one
        # forward (training's), whichever scheme the model computes (models.positions). Not the rope_deltas the
        # model stores: they place text after a video at its highest position + 1, which under transformers
        # 5.23's scheme is not where a full forward continues once the temporal positions outgrow the grid, e.g.
        # Qwen2.5-VL at 32 frames (tests/test_attribution.py checks both schemes)
        prompt_positions = _prompt_positions(model, adapter, p_ids, p_mask, kwargs)  # [3, U, P]
        positions = prompt_positions[..., -1][:, take, None] + steps[None]  # [3, R, C] (left padding)
    else:  # no media in any prefix: the model places tokens at 0..P-1, pads included
        positions = (p_ids.shape[1] - 1 + steps).expand(len(rows), -1)[None].expand(3, -1, -1)
    model.model.rope_deltas = None
    prefix = model.model(input_ids=p_ids, attention_mask=p_mask, mm_token_type_ids=adapter.mm_token_type_ids(p_ids),
                         use_cache=True, past_key_values=DynamicCache(config=model.config),
                         position_ids=prompt_positions, **kwargs)
    model.model.rope_deltas = None
    cache = prefix.past_key_values
    cache.batch_select_indices(take)
    r_idx = torch.tensor(rows, device=device)
    out = model.model(input_ids=completion_ids[r_idx], use_cache=True, past_key_values=cache,
                      attention_mask=torch.cat([p_mask[take], completion_mask[r_idx]], dim=1),
                      position_ids=positions)
    last = prefix.last_hidden_state[take, -1:]  # [R, 1, H] predicts completion token 0
    return torch.cat([last, out.last_hidden_state[:, : C - 1]], dim=1)


def _prompt_positions(model, adapter, prompt_ids, prompt_mask, media_kwargs: dict) -> torch.Tensor:
    """The 3D position ids [3, U, P] the model gives these prompts (with their media's grids) in a full forward."""
    import inspect

    compute = model.model.compute_3d_position_ids
    accepted = inspect.signature(compute).parameters
    grids = {k: media_kwargs.get(k) for k in ("video_grid_thw", "image_grid_thw", "second_per_grid_ts")
             if k in accepted}
    positions = compute(input_ids=prompt_ids, inputs_embeds=None, attention_mask=prompt_mask, past_key_values=None,
                        mm_token_type_ids=adapter.mm_token_type_ids(prompt_ids), **grids)
    model.model.rope_deltas = None  # computing them stores deltas on the model: leave none behind
    return positions


@contextmanager
def eval_mode(model):
    """The model in eval mode for the block, then back in the mode it was in. Attribution scores the inputs it
    claims only in eval mode: in train mode transformers' gradient-checkpointed decoder layers drop the KV cache
    (so a shared prompt prefix would silently vanish from the completion pass) and dropout is live."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def in_eval_mode(fn):
    """Decorator: `fn(model, ...)` runs with `model` in `eval_mode`."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with eval_mode(model):
            return fn(model, *args, **kwargs)

    return wrapper


@torch.no_grad()
@in_eval_mode
def attribute(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pixel_values_videos: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    options: AttributionOptions | None = None,
    logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    donors: Sequence = (),
    video_features: list[torch.Tensor] | None = None,
    video_keys: Sequence | None = None,
    image_features: list[torch.Tensor] | None = None,
    image_grid_thw: torch.Tensor | None = None,
    image_keys: Sequence | None = None,
    keep_perturbed_logp: bool = False,
    perturbed_only: bool = False,
) -> Attribution:
    """Score every response token under each enabled signal.

    prompt_ids/prompt_mask [B, P]; completion_ids/completion_mask [B, C]; logp/entropy [B, C]: pass the
    values the trainer already computed to skip the unperturbed rows (with distance="logprob"); otherwise the
    unperturbed input is evaluated in the same forward. video_features: precomputed encoder outputs per video
    (e.g. the trainer's policy pass, detached); video_keys: an identifier per video (equal keys = the same clip,
    which then shares one perturbation draw); without keys, identical pixels are detected.
    image_features/image_grid_thw/image_keys: the same for images (encoder outputs, e.g. the trainer's). An
    image row gets a visual score (its image features perturbed as a video's are: visual tokens on image data,
    paper B.2); it has no temporal score (excluded there). keep_perturbed_logp: also return the perturbed
    log-probs (`Attribution.perturbed_logp`) when the score is a full-distribution distance (with "logprob" they
    come for free); costs one more LM-head pass per perturbation, so training leaves it off.
    perturbed_only: evaluate the perturbed inputs only, with no unperturbed side at all (the caller supplies it
    later, `scores_from_logps`): the result has the perturbed log-probs and where each signal is defined, no
    scores, no logp (distance "logprob" and one temporal draw only: the mean of |Δ| over several draws needs
    each draw).
    """
    options = options or AttributionOptions()
    options.validate()
    if perturbed_only and (options.distance != "logprob" or options.temporal_samples != 1):
        raise ValueError("perturbed_only needs distance 'logprob' and temporal_samples 1")
    start = time.perf_counter()
    adapter = adapter_for(model)
    B = prompt_ids.shape[0]
    # unperturbed rows: all rows when the caller has no log-probs/entropies yet; only the video rows when they
    # are needed just as the reference of a full-distribution distance
    need_all_full = not perturbed_only and (logp is None or ("entropy" in options.signals and entropy is None))
    need_full = need_all_full or options.distance != "logprob"

    media = _batch_videos(model, adapter, prompt_ids, pixel_values_videos, video_grid_thw, video_features,
                          video_keys)
    _add_batch_images(media, adapter, prompt_ids, image_features, image_grid_thw, image_keys, need_all_full)
    full_rows = list(range(B)) if need_all_full else media.visual_rows  # batch rows of the "full" part, in order
    parts, draws = _forward_parts(media, options, full_rows if need_full else None, generator, donors, video_keys,
                                  image_keys)
    hidden_by_part = _batched_pass(model, adapter, media, parts, prompt_ids, prompt_mask, completion_ids,
                                   completion_mask, video_grid_thw, second_per_grid_ts, image_grid_thw, options)
    if need_all_full:
        full_logp, full_ent = lm_head_logprobs(
            hidden_by_part["full"], model.lm_head.weight, completion_ids, bias=getattr(model.lm_head, "bias", None),
            chunk_size=options.chunk_size, with_entropy=True)
        logp = full_logp if logp is None else logp
        entropy = full_ent if entropy is None else entropy
    scores, valid, perturbed_logp = _perturbation_scores(model, media, hidden_by_part, full_rows, completion_ids,
                                                         completion_mask, logp, options, keep_perturbed_logp)
    if "entropy" in options.signals and not perturbed_only:
        scores["entropy"] = entropy.float()
        valid["entropy"] = completion_mask.bool().clone()
    return Attribution(scores, valid, logp, entropy, time.perf_counter() - start, draws[0] if draws else [],
                       draws, perturbed_logp)


@dataclass
class _Media:
    """The batch's videos and images as attribution uses them. videos_of_row[b] / images_of_row[b]: indices of
    row b's videos / images; features / image_feats: encoder output per video [N_v, D] / image; owner[v]: index
    of the first video of the same clip (copies share one perturbation draw and one prompt prefix); groups[v]:
    temporal groups of video v."""

    videos_of_row: list[list[int]]
    features: list[torch.Tensor] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    images_of_row: list[list[int]] = field(default_factory=list)
    image_feats: list[torch.Tensor] = field(default_factory=list)
    image_owner: list[int] = field(default_factory=list)

    @property
    def video_rows(self) -> list[int]:
        """Rows with a video: the rows of the temporal parts."""
        return [b for b, videos in enumerate(self.videos_of_row) if videos]

    @property
    def visual_rows(self) -> list[int]:
        """Rows with a video or an image: the rows of the visual parts."""
        return [b for b, videos in enumerate(self.videos_of_row) if videos or self.images_of_row[b]]


def _batch_videos(model, adapter, prompt_ids, pixel_values_videos, video_grid_thw, video_features,
                  video_keys) -> _Media:
    """Media step 1: which videos each row holds and their encoder outputs, the vision tower run once per unique
    video (identical pixels, or equal `video_keys`, are one clip) unless the caller passes `video_features`."""
    B = prompt_ids.shape[0]
    media = _Media(videos_of_row=[[] for _ in range(B)], images_of_row=[[] for _ in range(B)])
    if video_grid_thw is None or not video_grid_thw.numel():
        return media
    media.videos_of_row = _media_per_row(prompt_ids, adapter.video_token_id, video_grid_thw,
                                         adapter.spatial_merge_size)
    media.groups = adapter.num_groups(video_grid_thw).tolist()
    if video_features is None:
        pixels = adapter.split_pixels(pixel_values_videos, video_grid_thw)
        owner = unique_items(pixels, video_grid_thw)
        uniq = sorted(set(owner))
        encoded = adapter.encode_videos(model, torch.cat([pixels[u] for u in uniq]), video_grid_thw[uniq])
        by_owner = dict(zip(uniq, encoded))
        media.features, media.owner = [by_owner[o] for o in owner], owner
    else:
        media.features = list(video_features)
        media.owner = list(range(len(media.features)))
    if video_keys is not None:
        if len(video_keys) != len(media.groups):
            raise ValueError(f"video_keys has {len(video_keys)} entries for {len(media.groups)} videos")
        first: dict = {}
        media.owner = [first.setdefault(k, i) for i, k in enumerate(video_keys)]
    return media


def _add_batch_images(media: _Media, adapter, prompt_ids, image_features, image_grid_thw, image_keys,
                      need_all_full: bool) -> None:
    """Media step 2: which images each row holds, with the caller's encoder outputs (attribute() encodes videos
    only); refuses image rows without them when the unperturbed rows must be computed here."""
    if image_grid_thw is not None and image_grid_thw.numel():
        if image_features is None or len(image_features) != len(image_grid_thw):
            raise ValueError("image rows need `image_features`: one encoder output per image of image_grid_thw")
        media.images_of_row = _media_per_row(prompt_ids, adapter.image_token_id, image_grid_thw,
                                             adapter.spatial_merge_size, "image")
        media.image_feats = list(image_features)
        first_image: dict = {}
        media.image_owner = [first_image.setdefault(k, i)
                             for i, k in enumerate(image_keys or range(len(media.image_feats)))]
    elif need_all_full and (prompt_ids == adapter.image_token_id).any():
        raise ValueError("attribute() encodes videos only: for rows with images pass `image_features` and "
                         "`image_grid_thw`, or `logp` and `entropy` from the caller's own forward")


def _forward_parts(media: _Media, options: AttributionOptions, full_rows: list[int] | None, generator, donors,
                   video_keys, image_keys) -> tuple[list[tuple], list[list[torch.Tensor]]]:
    """The perturbations: the parts of the single forward, [unperturbed (rows `full_rows`; None: no such
    part)] + [visual] + [temporal draws], each (name, batch rows, video features, image features) with the
    features of every video/image of the batch, perturbed for that part or not; and the temporal permutation per
    video of each temporal draw. The visual parts hold the rows with a video or an image, the temporal parts the
    rows with a video."""
    parts: list[tuple[str, list[int], list[torch.Tensor], list[torch.Tensor]]] = []
    if full_rows is not None:
        parts.append(("full", full_rows, media.features, media.image_feats))
    draws: list[list[torch.Tensor]] = []  # temporal permutation per video, per draw
    video_rows = media.video_rows
    for kind in [s for s in ("visual", "temporal") if s in options.signals]:
        part_rows = media.visual_rows if kind == "visual" else video_rows
        if not part_rows:
            continue
        for name in _draw_names(kind, options):
            pert = media.features
            if video_rows:
                pert, perms = perturbed_features(media.features, media.groups, kind, options, generator, donors,
                                                 media.owner, video_keys)
                if kind == "temporal":
                    draws.append(perms)
            pert_images = media.image_feats
            if kind == "visual" and media.image_feats:
                pert_images, _ = perturbed_features(media.image_feats, [1] * len(media.image_feats), kind, options,
                                                    generator, donors, media.image_owner, image_keys)
            parts.append((name, part_rows, pert, pert_images))
    return parts, draws


def _batched_pass(model, adapter, media: _Media, parts, prompt_ids, prompt_mask, completion_ids, completion_mask,
                  video_grid_thw, second_per_grid_ts, image_grid_thw, options) -> dict[str, torch.Tensor]:
    """The batched pass: every part's rows in one no-grad forward (prompt prefixes shared where the family
    allows it); returns each part's hidden states predicting the completion tokens, divided by the temperature,
    {name: [rows of the part, C, H]}."""
    if not parts:
        return {}
    P, C = prompt_ids.shape[1], completion_ids.shape[1]
    rows, prefix_keys, row_videos, row_images = [], [], [], []  # per forward row: batch row, prefix id, media
    first_of: dict[tuple, int] = {}  # prefix key -> index of its first row in the forward
    for name, part_rows, part_feats, part_images in parts:
        for b in part_rows:
            # rows whose prompt and (perturbed) media are identical share one prompt prefix
            key = (name, tuple(media.owner[v] for v in media.videos_of_row[b]),
                   tuple(media.image_owner[i] for i in media.images_of_row[b]), tuple(prompt_ids[b].tolist()))
            prefix_keys.append(first_of.setdefault(key, len(rows)))
            rows.append(b)
            row_videos.append([(part_feats[v], video_grid_thw[v],
                                None if second_per_grid_ts is None else second_per_grid_ts[v])
                               for v in media.videos_of_row[b]])
            row_images.append([(part_images[i], image_grid_thw[i]) for i in media.images_of_row[b]])
    # the choice depends on the options and the family only, never on the data: under ZeRO-3 / FSDP every
    # process must run the same sequence of forwards (a prefix that nothing shares costs one extra call)
    if options.share_prefix and adapter.family in PREFIX_SHARING_FAMILIES:
        hidden = _forward_shared_prefix(model, adapter, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                        rows, prefix_keys, row_videos, row_images)
    else:
        idx = torch.tensor(rows, device=completion_ids.device)
        input_ids = torch.cat([prompt_ids[idx], completion_ids[idx]], dim=1)
        attention_mask = torch.cat([prompt_mask[idx], completion_mask[idx]], dim=1)
        out = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          mm_token_type_ids=adapter.mm_token_type_ids(input_ids),
                          **_media_forward_kwargs(adapter, row_videos, row_images))
        hidden = out.last_hidden_state[:, P - 1 : P - 1 + C]  # position P-1+t predicts completion token t
    hidden = hidden / options.temperature  # [R, C, H]
    hidden_by_part, start_row = {}, 0
    for name, part_rows, _, _ in parts:
        hidden_by_part[name] = hidden[start_row : start_row + len(part_rows)]
        start_row += len(part_rows)
    return hidden_by_part


def _perturbation_scores(model, media: _Media, hidden_by_part, full_rows, completion_ids, completion_mask, logp,
                         options, keep_perturbed_logp) -> tuple[dict, dict, dict]:
    """The scores: per perturbation signal, each token's |Delta log p| (or distribution distance) between the
    unperturbed and the perturbed pass, the mean over its draws, [B, C] float32, with where it is defined (rows
    with the medium it perturbs); and the perturbed log-probs where computed (see attribute())."""
    head, device = model.lm_head, completion_ids.device
    bias = getattr(head, "bias", None)
    B, C = completion_ids.shape
    cmask = completion_mask.bool()
    scores: dict[str, torch.Tensor] = {}
    valid: dict[str, torch.Tensor] = {}
    perturbed_logp: dict[str, torch.Tensor] = {}
    for kind in [s for s in ("visual", "temporal") if s in options.signals]:
        part_rows = media.visual_rows if kind == "visual" else media.video_rows
        score = torch.zeros(B, C, dtype=torch.float32, device=device)
        if part_rows:
            rows_t = torch.tensor(part_rows, dtype=torch.long, device=device)
            names = _draw_names(kind, options)
            for name in names:  # one draw, or the mean over temporal_samples draws
                h = hidden_by_part[name]
                if options.distance == "logprob" or keep_perturbed_logp:
                    pert_logp = lm_head_logprobs(h, head.weight, completion_ids[rows_t], bias=bias,
                                                 chunk_size=options.chunk_size)
                    if kind not in perturbed_logp:
                        perturbed_logp[kind] = torch.zeros(B, C, dtype=pert_logp.dtype, device=device)
                    perturbed_logp[kind][rows_t] += pert_logp / len(names)
                if logp is None:
                    continue  # perturbed_only: the caller scores them against its own unperturbed side
                if options.distance == "logprob":
                    score[rows_t] += logprob_shift(logp[rows_t].float(), pert_logp, signed=options.signed) / len(names)
                else:
                    at = torch.tensor([full_rows.index(b) for b in part_rows], device=device)
                    score[rows_t] += lm_head_distribution_distance(hidden_by_part["full"][at], h, head.weight,
                                                                   options.distance, bias=bias,
                                                                   chunk_size=options.chunk_size) / len(names)
        if logp is not None:
            scores[kind] = score
        has = torch.zeros(B, dtype=torch.bool, device=device)
        has[part_rows] = True
        valid[kind] = cmask & has[:, None]
    return scores, valid, perturbed_logp


def _draw_names(kind: str, options: AttributionOptions) -> list[str]:
    """Names of a perturbation's parts in the forward: one per draw (temporal_samples draws for "temporal")."""
    n = options.temporal_samples if kind == "temporal" else 1
    return [kind] + [f"{kind}#{k}" for k in range(1, n)]


def scores_from_logps(logp: torch.Tensor, entropy: torch.Tensor | None, perturbed_logp: Mapping[str, torch.Tensor],
                      valid: Mapping[str, torch.Tensor], completion_mask: torch.Tensor, options: AttributionOptions,
                      seconds: float = 0.0) -> Attribution:
    """The Attribution of a batch whose perturbed log-probs came from `attribute(perturbed_only=True)` and whose
    unperturbed side comes from elsewhere (the policy's own forward at the same weights): the same scores
    `attribute` computes with distance "logprob" and one temporal draw, bit for bit at every valid position
    given the same inputs.

    logp [B, C], entropy [B, C] (needed with the entropy signal), perturbed_logp[s] [B, C] and valid[s] [B, C]
    bool for each perturbation signal s in options.signals; completion_mask [B, C].
    """
    scores: dict[str, torch.Tensor] = {}
    out_valid: dict[str, torch.Tensor] = {}
    for kind in [s for s in ("visual", "temporal") if s in options.signals]:
        ok = valid[kind].bool()
        shift = logprob_shift(logp.float(), perturbed_logp[kind], signed=options.signed)  # [B, C]
        scores[kind] = torch.where(ok.any(1, keepdim=True), shift, torch.zeros_like(shift))
        out_valid[kind] = ok
    if "entropy" in options.signals:
        if entropy is None:
            raise ValueError("the entropy signal needs the unperturbed entropies")
        scores["entropy"] = entropy.float()
        out_valid["entropy"] = completion_mask.bool().clone()
    return Attribution(scores, out_valid, logp, entropy, seconds, perturbed_logp=dict(perturbed_logp))


@dataclass
class SelectionOptions:
    """How scores become the key-token mask (paper Sec. 3.2, RQ4, RQ6)."""

    ratio: float = 0.2  # r: share of each response's tokens kept per signal, in (0, 1]
    scope: str = "response"  # "response" (exact top-r per response), "group", "global", "quantile" (official)
    weighting: str = "binary"  # "binary" (paper) or a soft scheme in core.WEIGHTINGS
    # "none" (train the union), or a control that trains as many tokens chosen otherwise (core.controls):
    # "random", "complement", "entropy_matched"
    control: str = "none"

    def validate(self) -> None:
        if not (0.0 < self.ratio <= 1.0):
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}, got {self.control!r}")
        if self.control != "none" and self.weighting != "binary":
            raise ValueError(f"control {self.control!r} replaces a binary mask; weighting must be 'binary', "
                             f"got {self.weighting!r}")
        if self.scope not in SELECTION_SCOPES:
            raise ValueError(f"selection scope must be one of {SELECTION_SCOPES}, got {self.scope!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")


def select_key_tokens(
    attribution: Attribution,
    options: SelectionOptions | None = None,
    group_ids: torch.Tensor | None = None,
    all_gather: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    rank: int = 0,
    response_valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Scores -> (token weights [B, C] float, per-signal masks, statistics).

    Binary weighting: the union of each signal's top-r tokens (paper Eq. 2's m_{i,t}). Soft weighting: the
    per-token maximum of each signal's soft weights (RQ4). group_ids [B] for scope "group"/"quantile";
    all_gather/rank for scope "global" (one threshold across processes).
    With a control (options.control != "none"): the weights are the control's mask instead of the union, as many
    tokens per response chosen otherwise (core.controls), among `response_valid` [B, C] bool (the response
    tokens; required), random draws from `generator`; the per-signal masks and statistics stay the union's, and
    statistics gain "control_update_ratio" (|control| / |response tokens|).
    """
    options = options or SelectionOptions()
    options.validate()
    masks: dict[str, torch.Tensor] = {}
    for name, score in attribution.scores.items():
        valid = attribution.valid[name]
        if options.scope == "response":
            masks[name] = top_ratio_mask(score, valid, options.ratio)
        elif options.scope == "group":
            masks[name] = group_top_ratio_mask(score, valid, options.ratio, _groups(group_ids, score))
        elif options.scope == "quantile":
            masks[name] = quantile_threshold_mask(score, valid, options.ratio, _groups(group_ids, score))
        else:
            masks[name] = global_top_ratio_mask(score, valid, options.ratio, all_gather=all_gather, rank=rank)
    stats = selection_stats(masks, combined_valid(attribution.valid))
    if options.control != "none":
        if response_valid is None:
            raise ValueError(f"control {options.control!r} needs response_valid (the response tokens it chooses "
                             "among)")
        valid = response_valid.bool()
        chosen = control_mask(options.control, union_masks(masks), valid, attribution.entropy, generator)
        stats["control_update_ratio"] = float(chosen.sum()) / max(1, int(valid.sum()))
        weights = chosen.float()
    elif options.weighting == "binary":
        weights = union_masks(masks).float()
    else:
        soft = [soft_token_weights(attribution.scores[n], attribution.valid[n], options.weighting)
                for n in attribution.scores]
        weights = torch.stack(soft).amax(0)
    return weights, masks, stats


def _groups(group_ids: torch.Tensor | None, score: torch.Tensor) -> torch.Tensor:
    if group_ids is None:
        raise ValueError("selection scope 'group'/'quantile' needs group_ids (the prompt index of each response)")
    return group_ids.to(score.device)


def combined_valid(valid: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Positions where at least one signal is defined [B, C]."""
    out = None
    for v in valid.values():
        out = v.clone() if out is None else out | v
    return out
