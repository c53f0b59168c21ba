"""The run folder: journalled rows, tidy tables, the manifest and atomic writes. The one place that
decides what a run leaves on disk; everything that reads a run back goes through it."""
