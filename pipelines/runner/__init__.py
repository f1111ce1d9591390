"""How a job runs, one room per concern, above `pipelines/local/` (which never imports this package):

- `kinds`: which runner a job names (`runner_kind`, `runner_name`);
- `local_clusters`: the facebeam-local cluster a job's options name, its worker pool and job server;
- `probes`: cluster, job-server and worker-pool checks before a job is submitted;
- `job_options`: the options a job gets (`pipeline_options`);
- `managed`: per-job Flink/Spark job servers with a start timeout, and the result that stops them;
- `launch`: `create_pipeline`, the Pipeline on the runner the options name;
- `presets`: the supported runner set-ups by name, and the cluster each needs;
- `worker`: the entry point of Direct's multi-process workers.
"""
