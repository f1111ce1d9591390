"""The local Elasticsearch cluster of `facebeam es`, one room per concern (see `local/elasticsearch.py`)."""
