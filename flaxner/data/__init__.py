"""Text into model rows: readers (keeping documents), words, labels, splits, the row planner, batching."""
