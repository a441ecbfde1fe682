"""Privacy measurement: what each observer of a run receives, and attacks on it."""
