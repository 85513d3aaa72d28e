"""Stage 5, evaluation: baselines fitted on the same split, full and sampled ranking metrics, the
evaluate stage, its report, and the multi-seed benchmark."""
