"""One module per claim of the paper; see :data:`singledir.experiments.CLAIMS`."""
