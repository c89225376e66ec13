"""Results for a reader: the run's report (``writer``), the evidence tables of a labelled-noise run
(``evidence``, ``comparisons``), and ``gdig explain`` (``explain``).

The top wing: it may import every other wing, and none imports it.
"""
