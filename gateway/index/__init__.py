"""Indexes: building one (training data, embeddings, Annoy, candidates, manifest, publish) apart
from holding one (verify, map, swap), and the service that schedules builds."""
