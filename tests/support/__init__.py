"""What the tests (and the benchmarks) share: free ports, the MLflow and S3 servers,
the generated datasets, the tiny experiment, the multi-node fault cluster, and the
independent reference implementations the math is checked against."""
