"""Response diffing: pairs of a primary's and a shadow's answers compared, counted, kept.

comparator (collects each mirrored request's parts) -> diff (the pure comparison) ->
diffstore (bounded samples and counts for /diffs) and endpoints (bounded endpoint names);
report reads a proxy's metrics and diffs and judges them.
"""
