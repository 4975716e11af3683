"""Serving: recommendations, outcomes, the catalogue, item scores, pseudonyms and erasure; the
requests they take and the errors they raise, and the one factory that wires them."""
