"""The paper's math as small, pure functions of torch tensors with shape comments: log-probs and entropies,
attribution scores, key-token selection, controls, soft weights, the baselines' terms and the clipped objective.
May import: torch only (no other part of videoktr, no transformers, no trl).

Log-probabilities and entropies (paper Sec. 3.1), chunked over rows so no full fp32 [B, T, V] tensor exists:
    selective_log_softmax(logits, index)          log softmax(logits)[index], [..., V] -> [...] float32
    token_entropy(logits)                         predictive entropy H(i), [..., V] -> [...] float32
    logprobs_and_entropy(logits, index)           both of the above from one logsumexp per chunk
    lm_head_logprobs(hidden, weight, index)       the same from hidden states and the LM head, logits never
                                                  materialised; differentiable (chunks are checkpointed)
Attribution scores (Sec. 3.1, RQ5):
    logprob_shift(logp_full, logp_perturbed)      |Delta log p| per token (signed=True: the official variant)
    DISTANCES                                     ("kl", "jsd", "l1", "l2", "cosine", "hellinger")
    distribution_distance(z_full, z_pert, metric) per-token distance between the two next-token distributions
    lm_head_distribution_distance(h_full, h_pert, weight, metric)   the same from hidden states
Key-token selection (Sec. 3.2; exactly ceil(r * n) tokens, >= 1, ties to the earlier token):
    top_ratio_mask(scores, valid, ratio)          top r% of each response (default)
    group_top_ratio_mask(..., group_ids)          top r% of each prompt group's pooled tokens
    global_top_ratio_mask(..., all_gather, rank)  top r% of all tokens on all processes
    quantile_threshold_mask(..., group_ids)       the official code's per-group torch.quantile threshold
    union_masks(masks)                            S = S_vis | S_temp | S_ent
    selection_stats(masks, valid)                 update ratio, per-signal ratios, Jaccard overlaps, unique shares
Controls (same number of tokens as the union, chosen otherwise; see core.controls):
    CONTROLS                                      ("none", "random", "complement", "entropy_matched")
    random_count_mask(counts, valid, generator)   per response, counts[r] uniformly random valid tokens
    complement_mask(union, valid, generator)      the tokens the union leaves out, capped at its size
    top_count_mask(scores, valid, counts)         per response, its counts[r] highest-scoring tokens
    control_mask(control, union, valid, entropy, generator)   the mask a control trains instead of the union
Soft weighting (RQ4):
    WEIGHTINGS                                    ("binary", "softmax", "sigmoid", "linear", "exponential")
    soft_token_weights(scores, valid, scheme)     per-response weights in [0, 1], 1 at the top token
Baselines (Sec. 4, RQ1):
    group_position_divergence_source(hidden, weight, valid, group_ids)   TW-GRPO's own per-(group, position)
                                                  k3 divergence to the group's mean log-probs
    tw_grpo_source_weights(divergence, valid, group_ids)   TW-GRPO's own weights: per-group min-max to [1, 1.7]
    group_position_kl(hidden, weight, valid, group_ids)   KL of each token's distribution to its group mean
    tw_grpo_weights(distances, valid)             per-response min-max to [1, 1.7] (variant "kl_to_mean")
Dynamic sampling and the perception-aware baselines (see core.perception for sources):
    constant_groups(rewards, group_size)          [N] -> [N/G] bool: a prompt group's rewards all equal (DAPO)
    fill_from_rounds(informative, needed)         the (round, group) pairs a dynamically sampled batch keeps
    k3_dependency(logp_real, logp_masked)         VPPO code's per-token visual dependency (k3 KL, clamped)
    vppo_advantage_scaling(dependency, valid, minimum)   VPPO's trajectory advantage factors [B]
    negative_logp_mean(logp, valid)               the entropy estimate of VPPO's / PAPO's entropy terms
    papo_perception_kl(logp_real, logp_masked, valid, clip)   PAPO's implicit perception KL (maximised)
Objective (Eq. 1-2):
    group_advantages(rewards, group_size)         GRPO advantages (R - mean) / (std + eps) per group
    k3_kl(logp, ref_logp)                         per-token k3 KL estimate
    LOSS_NORMALIZATIONS                           ("sequence", "token", "selected")
    masked_clipped_loss(logp, old_logp, advantages, completion_mask, token_weights, ...)
                                                  -J of Eq. 2 (+ beta * KL) and its statistics
"""

from .controls import CONTROLS, complement_mask, control_mask, random_count_mask, top_count_mask
from .baselines import group_position_divergence_source, group_position_kl, tw_grpo_source_weights, tw_grpo_weights
from .logprobs import lm_head_logprobs, logprobs_and_entropy, selective_log_softmax, token_entropy
from .objective import LOSS_NORMALIZATIONS, group_advantages, k3_kl, masked_clipped_loss
from .perception import (constant_groups, fill_from_rounds, k3_dependency, negative_logp_mean, papo_perception_kl,
                         vppo_advantage_scaling)
from .scores import DISTANCES, distribution_distance, lm_head_distribution_distance, logprob_shift
from .selection import (
    global_top_ratio_mask,
    group_top_ratio_mask,
    quantile_threshold_mask,
    selection_stats,
    top_ratio_mask,
    union_masks,
)
from .weighting import WEIGHTINGS, soft_token_weights

__all__ = [
    "selective_log_softmax", "token_entropy", "logprobs_and_entropy", "lm_head_logprobs",
    "logprob_shift", "DISTANCES", "distribution_distance", "lm_head_distribution_distance",
    "top_ratio_mask", "group_top_ratio_mask", "global_top_ratio_mask", "quantile_threshold_mask",
    "union_masks", "selection_stats",
    "CONTROLS", "random_count_mask", "complement_mask", "top_count_mask", "control_mask",
    "WEIGHTINGS", "soft_token_weights",
    "group_position_divergence_source", "tw_grpo_source_weights", "group_position_kl", "tw_grpo_weights",
    "constant_groups", "fill_from_rounds", "k3_dependency", "vppo_advantage_scaling", "negative_logp_mean",
    "papo_perception_kl",
    "group_advantages", "k3_kl", "LOSS_NORMALIZATIONS", "masked_clipped_loss",
]
