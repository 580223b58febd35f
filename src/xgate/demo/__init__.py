"""Demo services that `xgate up`, the integration tests and the benchmarks route traffic to."""
