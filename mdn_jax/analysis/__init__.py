"""Analysis of trained models (stability of the learned MDN gates)."""
