"""The mathematical side of clipcore: the data model of Chen, Deng, Li, Gu (ICLR 2024), its ground truth and
margins, the one fitting loop of the theory experiments, and sympy derivations (docs/methods.md, theory)."""
