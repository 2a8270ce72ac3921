"""FusedAdam is torch.optim.Adam(fused=True) without torch.optim's import of torch._dynamo."""

import torch

from gmvae_cli.optimizer import FusedAdam


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))


def _steps(net, opt, count: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(count):
        x = torch.randn(16, 5, generator=gen)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()


def test_same_weights_as_torch_fused_adam_and_state_dicts_interchange():
    ours, theirs = _net(0), _net(0)
    mine = FusedAdam(ours.parameters(), lr=0.01)
    reference = torch.optim.Adam(theirs.parameters(), lr=0.01, fused=True)
    _steps(ours, mine, 5, seed=1)
    _steps(theirs, reference, 5, seed=1)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    # Swap states: each continues where the other left off, as a resumed checkpoint would.
    swapped = torch.optim.Adam(ours.parameters(), lr=0.5, fused=True)
    swapped.load_state_dict(mine.state_dict())
    again = FusedAdam(theirs.parameters(), lr=0.5)
    again.load_state_dict(reference.state_dict())
    assert again.param_groups[0]["lr"] == 0.01
    _steps(ours, swapped, 3, seed=2)
    _steps(theirs, again, 3, seed=2)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert float(again.state[0]["step"]) == 8.0


def test_parameters_without_a_gradient_are_left_alone():
    net = _net(3)
    opt = FusedAdam(net.parameters(), lr=0.1)
    frozen = net[2].weight.detach().clone()
    net[2].weight.requires_grad_(False)
    _steps(net, opt, 2, seed=4)
    assert torch.equal(net[2].weight, frozen) and 2 not in opt.state and 0 in opt.state


def test_training_a_small_table_does_not_import_dynamo(tmp_path):
    """The point of FusedAdam: no ~1 s torch._dynamo import in a training process."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from gmvae_cli.api import GMVAE\n"
        "x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)).numpy()\n"
        "GMVAE(k=2, epochs=2, hidden=(8,), recipe='paper').fit(x)\n"
        "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "False"
