"""slm label: the labeling app — projects, annotation, agreement, review, active learning and label-error detection."""
