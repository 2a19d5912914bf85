"""Application benchmarks (`parrotlet bench WORKLOAD`): the Parrot workloads run through parrotlet's
serving layer and through a request-level client on the same engine and model.

`setup.py` builds engines (a real model folder, or a random-weight architecture), `synthetic.py`
makes text of exact token lengths, `apps.py` runs one app graph app-level or request-level,
`report.py` prints and saves a workload's table, and `workloads/` holds one module per workload.
"""
