"""flopmatch: compute-matched sampling, grading, metrics, training and reporting for
"Smaller, Weaker, Yet Better" (Bansal et al., 2024) style studies."""

__version__ = "0.1.0"
