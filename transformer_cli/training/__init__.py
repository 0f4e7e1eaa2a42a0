"""`tfx train`: the loop, the masked loss, learning-rate schedules, the run lock."""
