"""`pytest experiments/`: one test per checkable paper claim; results/ and RESULTS.md are generated."""
