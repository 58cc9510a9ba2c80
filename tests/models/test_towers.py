import pytest
import torch

from models.towers import ItemTower, UserTower


def unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


@pytest.fixture(params=["mean", "attention"])
def user(request):
    torch.manual_seed(0)
    return UserTower(dim=16, hidden=32, encoder=request.param, heads=2, layers=1, max_len=8).eval()


def test_item_tower_unit_norm_and_padding_ignored():
    torch.manual_seed(0)
    tower = ItemTower(vocab_size=50, dim=16, hidden=32).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    v = tower(ids, mask)
    assert v.shape == (2, 16)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(v[0], v[1])             # masked tokens do not count


def test_user_tower_padding_and_alignment(user):
    x = unit(1, 8, 16)
    mask = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    u = user(x, mask)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(1))
    x2 = x.clone()
    x2[0, :5] = unit(5, 16)                             # change only the padded columns
    torch.testing.assert_close(user(x2, mask), u)
    # the same 3 clicks left-aligned (padding after them) give the same vector
    x3 = torch.zeros_like(x)
    x3[0, :3] = x[0, 5:]
    m3 = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(user(x3, m3), u, atol=1e-5, rtol=1e-5)


def test_user_tower_is_causal(user):
    x = unit(2, 8, 16)
    mask = torch.ones(2, 8, dtype=torch.bool)
    h = user.encode_all(x, mask)
    x2 = x.clone()
    x2[:, 5:] = unit(2, 3, 16)                          # change the future
    torch.testing.assert_close(user.encode_all(x2, mask)[:, :5], h[:, :5])
    torch.testing.assert_close(user(x, mask), h[:, -1])


def test_a_click_on_a_new_item_moves_the_user(user):
    # the user tower reads item VECTORS, so an item unseen in training still counts
    x = unit(1, 8, 16)
    mask = torch.ones(1, 8, dtype=torch.bool)
    x_new = x.clone()
    x_new[0, -1] = unit(16)
    assert (user(x, mask) - user(x_new, mask)).abs().max() > 1e-3
