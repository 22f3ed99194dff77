"""The model lab: the training task suite, training, evaluation, engine benchmarks and profiling."""
