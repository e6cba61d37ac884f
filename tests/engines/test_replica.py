"""A replica held by a real Ray actor (local cluster, CPU): built once, used, shut down."""

import pytest

from internvl_batch.engines.replica import replica_resources, start_replica
from tests.engines.conftest import GREEDY_16, image_request, tiny_model_config


@pytest.mark.parametrize("tp,use_gpu,gpus", [(1, True, 1), (4, True, 4), (4, False, 0)])
def test_replica_asks_for_tp_gpus(tp, use_gpu, gpus):
    model = tiny_model_config("OpenGVLab/InternVL2_5-78B-AWQ", tensor_parallel_size=tp)
    assert replica_resources(model, use_gpu=use_gpu).ray_options()["num_gpus"] == gpus


@pytest.mark.slow
def test_ray_actor_owns_one_engine(tiny_model_dir, hf_engine):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        model = tiny_model_config(tiny_model_dir, engine="hf")
        actor = start_replica(model, GREEDY_16, use_gpu=False)
        reqs = [image_request("a", [((640, 480), 4)], "Describe."), image_request("b", [((300, 300), 1)], "Hi?")]
        remote = ray.get(actor.generate.remote(reqs), timeout=300)
        local = hf_engine.generate(reqs)
        assert [r.token_ids for r in remote] == [r.token_ids for r in local]
        ray.get(actor.shutdown.remote(), timeout=60)
    finally:
        ray.shutdown()
