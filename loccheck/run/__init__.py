"""Running a claim: the testbed every fit shares, the jobs (claim, ceiling, random locations), the
executors that fit them, the result, and `verify`, which wires the stages together."""
