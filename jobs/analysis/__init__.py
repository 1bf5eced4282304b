"""Analysis: the label audit and the quality/quantity trade-off."""
