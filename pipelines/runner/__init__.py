"""Runner plumbing: runner defaults and presets, the managed Flink/Spark job server, jar staging."""
