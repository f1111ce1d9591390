"""Local services behind `facebeam es|flink|spark up|down|status`, on one toolkit."""
