"""Online learner: time-decayed user scores and embeddings from the CDC stream."""
