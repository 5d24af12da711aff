"""The model-zoo benchmark: train a grid of models, compute every generalization measure, score them.

Offers :mod:`.protocols` (Kendall tau + bootstrap CI, granulated Psi, PGDL conditional mutual
information, Dziugaite's robust sign-error), :mod:`.grid` (the presets), :mod:`.bench` (``run_zoo``:
train, measure, score, report) and :mod:`.report` (index.html + report.md).
"""
