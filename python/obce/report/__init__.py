"""Reports of an analysis: figures of neuron importance."""
