"""Everything with a process or time boundary: the runner and rollout collection."""
