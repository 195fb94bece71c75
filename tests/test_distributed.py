"""Two CPU processes (gloo) give the global-batch result: the loss and every gradient of one step equal one process's.

`distributed_step.py` runs one step under `accelerate launch` (2 processes, DDP, negatives gathered across processes)
and on one process (the concatenated batch); see its docstring for why the mean of the ranks' reported losses is the
comparable quantity. The same launch repeats the step with GradCache (cached mini-batches, gather and label
deduplication across processes, gradient accumulation under no_sync), which must match too. The spawn tests check
the gather primitives themselves against a one-process computation.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(out_dir: Path, timeout: float = 240.0) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu` with ACCELERATE_USE_CPU: two gloo processes (`--cpu` alone starts only one)."""
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(out_dir / "hf_home"),  # no user accelerate default_config.yaml can change the launch
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(TESTS / "distributed_step.py"), str(out_dir),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher's session: the launcher and the workers it started
        output, _ = process.communicate()
        pytest.fail(f"accelerate launch did not finish in {timeout:.0f} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)


def test_two_processes_give_the_global_batch_loss_and_gradients(tmp_path):
    import distributed_step

    result = _launch(tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [info["rank"] for info in ranks] == [0, 1]
    assert all(info["world_size"] == 2 for info in ranks), ranks  # really two processes, not one
    assert all(info["num_sentences"] == 4 for info in ranks)
    # the batch exercises cross-process deduplication: shared relations (0, 1) and one relation per rank only
    assert set(ranks[0]["label_relation_ids"]) & set(ranks[1]["label_relation_ids"]) == {0, 1}
    assert set(ranks[0]["label_relation_ids"]) ^ set(ranks[1]["label_relation_ids"]) == {2, 3}

    distributed = torch.load(tmp_path / "distributed.pt")
    single = distributed_step.run_single()
    assert distributed["world_size"] == 2 and single["world_size"] == 1
    # the contrastive term is the global one on every rank; the MLM terms differ per rank (local sums)
    rank_contrastive = distributed["rank_contrastive_losses"]
    assert rank_contrastive[0] == pytest.approx(rank_contrastive[1], abs=ATOL)
    for key in ("loss", "contrastive_loss", "sentence_mlm_loss", "label_mlm_loss"):
        assert distributed[key] == pytest.approx(single[key], abs=ATOL), key

    assert distributed["grads"].keys() == single["grads"].keys()
    assert "logit_scale" in single["grads"] and single["grads"]["logit_scale"].abs() > 0
    diffs = {name: (distributed["grads"][name] - grad).abs().max().item() for name, grad in single["grads"].items()}
    worst = max(diffs, key=diffs.get)
    loss_diff = abs(distributed["loss"] - single["loss"])
    print(f"loss |diff| = {loss_diff:.2e}; max |grad diff| = {diffs[worst]:.2e} ({worst})")
    assert diffs[worst] <= ATOL, sorted(diffs.items(), key=lambda item: -item[1])[:5]
    # the comparison is not vacuous: both towers and both MLM heads receive real gradients
    for prefix in ("sentence_encoder.", "label_encoder.", "sentence_mlm_head.", "label_mlm_head."):
        assert any(g.abs().max() > 1e-3 for n, g in single["grads"].items() if n.startswith(prefix)), prefix

    # GradCache under DDP with gather: mini-batches of 2 per rank, as one micro-batch and as two accumulated ones
    # (the first inside no_sync), give the same loss terms and gradients; DDP's own hooks reduce nothing (the re-runs
    # bypass its forward), the uncached step's did, and `synchronize_gradients` averaged once
    assert distributed["uncached_ddp_reductions"] > 0
    for name in ("cached", "cached_accumulated"):
        cached = distributed[name]
        assert cached["ddp_reductions"] == 0, name
        for key in ("loss", "contrastive_loss", "sentence_mlm_loss", "label_mlm_loss"):
            assert cached[key] == pytest.approx(single[key], abs=ATOL), (name, key)
        assert cached["grads"].keys() == single["grads"].keys()
        diffs = {n: (cached["grads"][n] - grad).abs().max().item() for n, grad in single["grads"].items()}
        worst = max(diffs, key=diffs.get)
        print(f"{name}: max |grad diff| = {diffs[worst]:.2e} ({worst})")
        assert diffs[worst] <= ATOL, (name, sorted(diffs.items(), key=lambda item: -item[1])[:5])


# ---------------------------------------------------------------------------------------------------------------
# The gather primitives on two spawned gloo processes, against one process computing on the concatenated rows.

SIZES = (3, 1)  # uneven rows per rank: the gather pads to the longest and trims


def _global_objective(x: torch.Tensor) -> torch.Tensor:
    """A non-linear function of all rows together (each row interacts with every other)."""
    return torch.logsumexp(x @ x.T, dim=1).sum() + (x**3).sum()


def _load_losses():
    """modeling_sacon/losses.py alone (it needs only torch): the package's __init__ imports transformers, which costs
    each spawned process over 10 s on two shared cores."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sacon_losses", ROOT / "modeling_sacon" / "losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gather_worker(rank: int, store_path: str) -> None:
    losses = _load_losses()
    SaconObjective, deduplicate_labels = losses.SaconObjective, losses.deduplicate_labels
    gather_no_grad, gather_with_grad = losses.gather_no_grad, losses.gather_with_grad
    first_occurrence_across_processes = losses.first_occurrence_across_processes
    symmetric_contrastive_loss = losses.symmetric_contrastive_loss

    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
        generator = torch.Generator().manual_seed(0)

        # gather_with_grad: forward is the concatenation; backward sums every rank's gradient (a reduce-scatter),
        # so after DDP's division by the world size a rank holds the one-process gradient of its rows
        full = torch.randn(sum(SIZES), 5, generator=generator, dtype=torch.float64)
        local = full[start:stop].clone().requires_grad_()
        gathered = gather_with_grad(local)
        assert torch.equal(gathered, full)
        _global_objective(gathered).backward()
        reference = full.clone().requires_grad_()
        _global_objective(reference).backward()
        torch.testing.assert_close(local.grad / 2, reference.grad[start:stop], rtol=0, atol=1e-10)

        # ids gathered without grad; the label rows deduplication keeps are the first in rank order
        ids = [torch.tensor([3, 7, 9]), torch.tensor([7, 1])][rank]
        assert gather_no_grad(ids).tolist() == [3, 7, 9, 7, 1]
        assert first_occurrence_across_processes(ids).tolist() == [[True, True, True], [False, True]][rank]

        # the contrastive loss on the gathered, deduplicated global batch, and its gradients
        # 3 + 2 sentences of relations 7 3 9 | 1 7: relation 7 on both ranks, its label row on both too
        relation_of_sentence = [torch.tensor([7, 3, 9]), torch.tensor([1, 7])][rank]
        s_start, s_stop = (0, 3) if rank == 0 else (3, 5)
        sentences = torch.randn(5, 6, generator=generator, dtype=torch.float64)
        label_rows = {3: 0, 7: 1, 9: 2, 1: 3}  # one embedding per relation, the same on both ranks
        label_table = torch.randn(4, 6, generator=generator, dtype=torch.float64)
        scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
        local_sentences = sentences[s_start:s_stop].clone().requires_grad_()
        local_labels = label_table[[label_rows[int(i)] for i in ids]].clone().requires_grad_()
        labels = torch.tensor([ids.tolist().index(int(r)) for r in relation_of_sentence])
        config = SimpleNamespace(label_anchored_reduction="sum", sentence_anchored_weight=1.0, label_anchored_weight=1.0,
                                 label_negatives=0)  # SaconConfig's defaults (losses.py alone: no transformers)
        loss, *_ = SaconObjective(config).contrastive(local_sentences, local_labels, labels, scale, ids, gather=True)
        loss.backward()

        ref_sentences = sentences.clone().requires_grad_()
        all_ids = torch.tensor([3, 7, 9, 7, 1])
        ref_label_input = label_table[[label_rows[int(i)] for i in all_ids]].clone().requires_grad_()
        ref_scale = scale.detach().clone().requires_grad_()
        unique_labels, ref_labels = deduplicate_labels(ref_label_input, all_ids, torch.tensor([7, 3, 9, 1, 7]))
        ref_loss = symmetric_contrastive_loss(ref_sentences, unique_labels, ref_labels, ref_scale)[0]
        ref_loss.backward()
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-10)
        torch.testing.assert_close(local_sentences.grad / 2, ref_sentences.grad[s_start:s_stop], rtol=0, atol=1e-10)
        label_slice = slice(0, 3) if rank == 0 else slice(3, 5)
        torch.testing.assert_close(local_labels.grad / 2, ref_label_input.grad[label_slice], rtol=0, atol=1e-10)
        if rank == 1:  # relation 7's row here is a duplicate of rank 0's: dropped, so no gradient
            assert torch.equal(local_labels.grad[0], torch.zeros(6, dtype=torch.float64))
        torch.testing.assert_close(scale.grad, ref_scale.grad, rtol=0, atol=1e-10)  # not gathered: the same per rank
    finally:
        dist.destroy_process_group()


def test_gather_primitives_match_one_process(tmp_path):
    mp.spawn(_gather_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)
