"""Jobs as data and who trains them: job specs, the job runner, the worker, the server's policy and limits."""
