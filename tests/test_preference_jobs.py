"""A detached DPO job on the cluster (tiny llama): stopped mid-run, then resumed from its last checkpoint to the
end, and registered. The in-process resume of a DPO run is in tests/test_preference.py; this is the same through
the job's record, Ray Jobs and the client, as a user leaves a preference run overnight (-m heavy: a job of its own,
about a minute)."""
import json
import os
import time
from pathlib import Path

import pytest

from byzer_like.catalog import Catalog

from test_preference import PAIRS

pytestmark = [pytest.mark.ray, pytest.mark.heavy]


@pytest.mark.timeout(420)
def test_a_detached_dpo_job_stopped_mid_run_resumes_from_its_checkpoint(llm, tiny_models, workspace):
    job = llm.dpo(PAIRS * 5, model_path=tiny_models["llama"], pretrained_model_type="dpo/llama",
                  output_table="dpo_resumed", detached=True, max_steps=2000, batch_size=4, checkpoint_steps=5,
                  logging_steps=1, learning_rate=1e-4, max_prompt_length=6)
    job_id = job["job_id"]
    jobs = llm.jobs
    deadline = time.monotonic() + 240
    while jobs.status(job_id)["step"] < 12:  # past the second checkpoint
        assert jobs.status(job_id)["state"] in ("PENDING", "RUNNING"), jobs.logs(job_id)
        assert time.monotonic() < deadline, f"waited 240 s for step 12 of the DPO job: {jobs.logs(job_id)[-2000:]}"
        time.sleep(1)
    running = jobs.record(job_id)
    assert running["kind"] == "dpo" and "rewards/margins" in running["metrics"], running["metrics"]

    assert jobs.stop(job_id)["state"] == "STOPPED"
    pid = int(running["runner"].rsplit(":", 1)[1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the runner is gone
    checkpoints = sorted(int(p.name.split("-")[1]) for p in Path(running["run_dir"], "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] >= 10, checkpoints
    assert not llm.catalog.model_exists("dpo_resumed")  # nothing registered from a stopped run

    # resumed as a blocking run, shortened to five steps past the last checkpoint so that the test ends soon
    end = checkpoints[-1] + 5
    Catalog(workspace).update_job(job_id, options={**running["options"], "max_steps": end})
    done = jobs.resume(job_id, detached=False)
    assert done["state"] == "SUCCEEDED" and done["step"] == end, done
    metrics = json.loads(done["metrics"]) if isinstance(done["metrics"], str) else done["metrics"]
    assert metrics["resumed_from_step"] == checkpoints[-1] > 0 and metrics["steps"] == end, metrics
    assert f"training from step {checkpoints[-1]} of {end}" in jobs.logs(job_id)
    entry = llm.catalog.model("dpo_resumed")
    assert entry.job_id == job_id and entry.kind == "adapter"
