"""Whole clips between host memory and a GPU (``lipar.transfer``): pieces that cover the tensor, in place on
the way back; on a GPU, through the two pinned buffers, with the GPU lagging behind the host."""
import pytest
import torch

from lipar import transfer


def test_frames_cross_in_pieces_that_cover_the_clip(monkeypatch):
    """``to_device_in_pieces`` hands out consecutive pieces of at most STAGING_BYTES that together are the
    whole tensor (on the CPU: plain copies; the pinned double buffer is tested on the GPU below)."""
    monkeypatch.setattr(transfer, "STAGING_BYTES", 3 * 2 * 4 * 5 * 2 * 4)   # 3 frames of [2, ., 4, 5, 2] float32
    x = torch.randn(2, 8, 4, 5, 2)
    pieces = list(transfer.to_device_in_pieces(x[:, 1:], 1, torch.device("cpu")))
    assert [(start, p.shape[1]) for start, p in pieces] == [(0, 3), (3, 3), (6, 1)]
    assert torch.equal(torch.cat([p for _, p in pieces], 1), x[:, 1:])


def test_pieces_come_back_into_their_place_on_the_host():
    """``to_host_in_pieces`` writes each piece at its start along the axis (CPU pieces: plain copies)."""
    x = torch.randn(2, 7, 3, 4)
    dest = torch.zeros(2, 7, 3, 4)[:, :]
    transfer.to_host_in_pieces(((s, x[:, s:s + 3]) for s in (3, 0, 6)), dest, 1)
    assert torch.equal(dest, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_frames_cross_to_the_gpu_through_two_pinned_buffers(monkeypatch):
    """Pageable frames reach the GPU through the two pinned buffers, each reused only once the GPU has read it:
    the pieces equal a plain ``.to("cuda")``, also for a strided (cropped, batched) clip and when the work on
    the GPU lags behind the copies."""
    monkeypatch.setattr(transfer, "STAGING_BYTES", 2 << 20)
    x = torch.rand(2, 40, 96, 128, 3)[:, :, 3:91]                         # strided, 2 x 40 frames of 1.1 MB
    want = x.cuda()
    got = torch.empty_like(want)
    for start, piece in transfer.to_device_in_pieces(x, 1, torch.device("cuda")):
        torch.cuda._sleep(2_000_000)                                      # the GPU falls behind the host copies
        got[:, start:start + piece.shape[1]] = piece
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_frames_come_back_from_the_gpu_through_two_pinned_buffers(monkeypatch):
    """GPU pieces reach pageable host memory through the two pinned buffers, each reused only once its copy to
    the host is done: the result equals a plain ``.cpu()``, also into a strided destination, with pieces of
    different sizes, and when the GPU work that makes each piece is slow."""
    monkeypatch.setattr(transfer, "STAGING_BYTES", 2 << 20)
    x = torch.rand(2, 40, 96, 88, 3, device="cuda")
    dest = torch.zeros(2, 41, 96, 88, 3)[:, 1:]                            # strided host destination
    starts = [0, 3, 5, 11, 18, 30, 40]

    def pieces():
        for a, b in zip(starts, starts[1:]):
            torch.cuda._sleep(2_000_000)                                  # the GPU lags behind the host
            yield a, x[:, a:b] * 1.0                                      # a fresh tensor, as process_output's
    transfer.to_host_in_pieces(pieces(), dest, 1)
    assert torch.equal(dest, x.cpu())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_pieces_to_and_from_a_gpu_that_is_not_the_current_one(monkeypatch):
    """With the clip's GPU not the current device (a VAE on the second GPU), each buffer still waits for the
    copy on that GPU's stream before it is reused: both directions equal plain copies while that GPU lags."""
    monkeypatch.setattr(transfer, "STAGING_BYTES", 1 << 20)
    other = torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    x = torch.rand(1, 24, 64, 80, 3)
    got = torch.empty(x.shape, device=other)
    for start, piece in transfer.to_device_in_pieces(x, 1, other):
        with torch.cuda.device(other):
            torch.cuda._sleep(2_000_000)
        got[:, start:start + piece.shape[1]] = piece
    assert torch.equal(got.cpu(), x)
    dest = torch.zeros(x.shape)

    def pieces():
        for s in range(0, 24, 5):
            with torch.cuda.device(other):
                torch.cuda._sleep(2_000_000)
            yield s, got[:, s:s + 5] * 1.0
    transfer.to_host_in_pieces(pieces(), dest, 1)
    assert torch.equal(dest, x)
