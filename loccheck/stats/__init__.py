"""The statistics of a verdict, numpy and scipy only: the random-location null, exact p-values and
the sequential stop, and the verdict rule."""
