"""featloss: hyperparameter studies of feature-learning classification losses.

Importing the package has no side effects: Ray imports it in every worker.
"""

__version__ = "0.1.0"
