"""The simulated world: a deterministic generator of members, titles and plays with ground truth."""
