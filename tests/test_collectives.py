"""The gradient exchange of the distributed trainer, between real processes (torch.distributed over gloo):
one gather a step must average what one process with every rank's batches would compute."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from xdrec.training.distributed import TorchCollective
from xdrec.training.loop import sparse_tables

# Each rank's batch: (users, items). Rank 1 repeats a user and touches no item row: uneven and empty gathers.
BATCHES = {0: ([0, 3, 5], [1, 2]), 1: ([5, 5], [])}


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.users, self.items, self.head = nn.Embedding(8, 4), nn.Embedding(6, 4), nn.Linear(4, 1)

    def loss(self, users: list[int], items: list[int]) -> torch.Tensor:
        loss = self.head(self.users(torch.tensor(users))).pow(2).sum()
        return loss + self.items(torch.tensor(items, dtype=torch.long)).sum() * 3 if items else loss


def exchanged_gradients(rank: int, size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        model = Towers()
        tables = sparse_tables(model)
        model.loss(*BATCHES[rank]).backward()
        for parameter in model.parameters():  # as the loop does: an untouched table joins with no rows
            if parameter.grad is None:
                parameter.grad = torch.sparse_coo_tensor(torch.empty((1, 0), dtype=torch.long),
                                                         torch.empty(0, 4), parameter.shape)
        parameters = list(model.parameters())
        TorchCollective(torch.device("cpu")).average_gradients(
            [p for p in parameters if id(p) not in tables], [p for p in parameters if id(p) in tables])
        results[rank] = {name: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
                         for name, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()


def test_one_gather_a_step_averages_what_one_process_computes_from_every_ranks_batch(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(exchanged_gradients, args=(2, str(tmp_path / "init"), results), nprocs=2)
    expected = {}
    for rank in BATCHES:  # the mean of each rank's own gradient, dense, in one process
        model = Towers()
        model.loss(*BATCHES[rank]).backward()
        for name, parameter in model.named_parameters():
            gradient = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
            expected[name] = expected.get(name, 0) + gradient / len(BATCHES)
    for rank in BATCHES:
        for name, gradient in expected.items():
            torch.testing.assert_close(results[rank][name], gradient, msg=f"rank {rank}, {name}")
    assert results[0]["users.weight"][5].abs().sum() > 0 and results[0]["items.weight"][4].abs().sum() == 0
