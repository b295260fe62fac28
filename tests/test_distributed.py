"""distributed.py: in one process every call is a no-op that returns what one rank would have alone (the training
code calls them unconditionally); with two gloo ranks, broadcast, gather and the shard/unshard split agree.
(tests/training/test_distributed.py trains with two ranks end to end.)"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from llm_summarizer import distributed as dist

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def one_process(monkeypatch):
    for k in LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)


def test_one_process_is_rank_zero_of_one(one_process):
    assert (dist.world_size(), dist.rank(), dist.local_rank()) == (1, 0, 0)
    assert dist.is_main() and not dist.distributed() and not dist.initialized()


def test_empty_launcher_variables_read_as_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(k, "")
    assert (dist.world_size(), dist.rank(), dist.local_rank()) == (1, 0, 0)


def test_the_launchers_variables_name_the_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (dist.world_size(), dist.rank(), dist.local_rank()) == (4, 3, 1)
    assert dist.distributed() and not dist.is_main()


def test_collectives_in_one_process_return_their_input(one_process):
    obj = {"resume_from": "checkpoint-8", "steps": [1, 2]}
    assert dist.broadcast(obj) is obj
    assert dist.gather(obj) == [obj] and dist.gather(obj)[0] is obj
    dist.barrier()
    dist.init()  # one process: no process group is made
    assert not dist.initialized()


def test_a_rank_without_a_process_group_works_alone(monkeypatch):
    # launched as rank 1 of 2 but before init(): nothing waits for a group that does not exist
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert dist.broadcast("mine") == "mine" and dist.gather(5) == [5]
    assert dist.shard(5) == [0, 1, 2, 3, 4]  # all of them: shard and gather agree
    with dist.main_first():
        pass


def test_main_first_runs_the_block_and_propagates_its_error(one_process):
    ran = []
    with dist.main_first():
        ran.append(1)
    assert ran == [1]
    with pytest.raises(ValueError):
        with dist.main_first():
            raise ValueError


@pytest.mark.parametrize("n", [0, 1, 5])
def test_shard_in_one_process_is_everything_and_unshard_puts_it_back(one_process, n):
    items = [f"summary {i}" for i in range(n)]
    part = [items[i] for i in dist.shard(n)]
    assert part == items
    assert dist.unshard(dist.gather(part), n) == items


def test_unshard_interleaves_every_ranks_part(one_process):
    # rank r held items r, r+w, r+2w, ...: 7 items over 3 ranks
    assert dist.unshard([["a", "d", "g"], ["b", "e"], ["c", "f"]], 7) == list("abcdefg")
    assert dist.unshard([["a"], [], []], 1) == ["a"]  # more ranks than items


# -- two ranks, gloo -----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(r: int, port: int, out: str) -> None:
    """One rank of two, as torchrun would start it (the launcher's variables, then init)."""
    os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    from llm_summarizer import distributed as d

    d.init(timeout_s=60)
    result = {"initialized": d.initialized(), "rank": d.rank(), "world": d.world_size()}
    result["broadcast"] = d.broadcast({"checkpoint": f"from rank {r}"})
    result["gather"] = d.gather(f"rank {r}")
    n = 7
    mine = d.shard(n)
    result["shard"] = mine
    result["unshard"] = d.unshard(d.gather([f"text {i}" for i in mine]), n)
    cache = Path(out) / "cache.txt"
    with d.main_first():  # rank 0 builds, rank 1 must find it built
        if d.is_main():
            cache.write_text("built by rank 0")
        result["cache_seen"] = cache.read_text()
    d.barrier()
    Path(out, f"rank{r}.json").write_text(json.dumps(result))
    import torch.distributed

    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_agree(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(results):
        assert res["initialized"] and res["rank"] == r and res["world"] == 2
        assert res["broadcast"] == {"checkpoint": "from rank 0"}
        assert res["gather"] == ["rank 0", "rank 1"]
        assert res["unshard"] == [f"text {i}" for i in range(7)]
        assert res["cache_seen"] == "built by rank 0"
    assert results[0]["shard"] == [0, 2, 4, 6] and results[1]["shard"] == [1, 3, 5]
