"""Side-by-side benchmarks against the anchors; see BENCHMARKS.md."""
