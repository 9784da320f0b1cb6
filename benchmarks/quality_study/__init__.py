"""The quality study behind ``benchmarks/quality.py`` (its entry point and protocol text).

Modules, in the order a run uses them:

* :mod:`.protocol`: the regimes, datasets, step-budget rule, tuning grids and
  the metric the study selects on;
* :mod:`.data`: preparing the pipeline runs, reading their joined splits,
  the seeded validation and share split;
* :mod:`.scoring`: a split's queries against the catalog, ranked and sliced
  with the product's metric code;
* :mod:`.runner`: training and test workers, the run cache, the searches and
  the step budgets;
* :mod:`.report`: the flat results keys, the results page and its chart.
"""
