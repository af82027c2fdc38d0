"""Reproductions of paper figures and tables that are not benchmark runs, each with its command line:
`python -m harness.figures.ncis toy` (seed 000 Fig. 2) and `python -m harness.figures.flow toy|lipschitz`
(seed 004 Fig. 2, Table 4)."""
