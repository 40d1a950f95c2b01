"""Token Status List pieces (draft-ietf-oauth-status-list-19): the encoder read back by a decoder
written here from the draft (§4.1), index blocks, the allocator and the publisher's cache."""

from __future__ import annotations

import asyncio
import base64
import random
import zlib
from typing import Any

import pytest

from sts.lifecycle.status_index import BLOCK_SIZE, StatusIndexAllocator, block_range
from sts.lifecycle.statuslist import STATUS_LIST_CAPACITY, encode_status_list, status_claim
from sts.tokens.claims import AccessTokenSpec, build_access_token_claims


def draft_status(lst: str, idx: int) -> int:
    """§4.1, one bit per token: byte idx // 8, bit idx % 8 counted from the least significant."""
    array = zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))
    return (array[idx // 8] >> (idx % 8)) & 1


@pytest.mark.parametrize("invalid", [
    pytest.param(set(), id="none"),
    pytest.param({0}, id="first"),
    pytest.param({7, 8}, id="byte_edge"),
    pytest.param({0, 3, 4, 5, 7, 8, 9, 13, 15}, id="draft_example"),
    pytest.param(set(random.Random(7).sample(range(50_000), 300)), id="random"),
])
def test_encoder_matches_the_drafts_layout(invalid: set[int]) -> None:
    encoded = encode_status_list(invalid, min_size=50_000)
    assert encoded["bits"] == 1 and "=" not in encoded["lst"]
    for i in set(range(64)) | invalid | {49_999}:
        assert draft_status(encoded["lst"], i) == (1 if i in invalid else 0), i


def test_encoder_gives_the_drafts_example_bytes() -> None:
    encoded = encode_status_list({0, 3, 4, 5, 7, 8, 9, 13, 15})
    assert zlib.decompress(base64.urlsafe_b64decode(encoded["lst"] + "==")) == bytes([0xB9, 0xA3])


def test_encoder_covers_min_size_and_refuses_out_of_range() -> None:
    encoded = encode_status_list([], min_size=1024 * 3)
    assert len(zlib.decompress(base64.urlsafe_b64decode(encoded["lst"] + "=="))) == 384
    with pytest.raises(ValueError):
        encode_status_list([STATUS_LIST_CAPACITY])


def test_blocks_are_consecutive_and_wrap_at_capacity() -> None:
    assert block_range(0) == range(0, BLOCK_SIZE)
    assert block_range(1) == range(BLOCK_SIZE, 2 * BLOCK_SIZE)
    assert block_range(STATUS_LIST_CAPACITY // BLOCK_SIZE) == range(0, BLOCK_SIZE)


class FakeRepo:
    def __init__(self) -> None:
        self.reserved = 0

    def reserve_block(self, *, size: int, now: float) -> int:
        self.reserved += 1
        return self.reserved - 1


def test_allocator_writes_once_per_block_and_never_repeats() -> None:
    repo = FakeRepo()
    allocator = StatusIndexAllocator(repo, block_size=4)  # type: ignore[arg-type]

    async def run() -> list[int]:
        return list(await asyncio.gather(*(allocator.allocate() for _ in range(10))))

    got = asyncio.run(run())
    assert sorted(got) == list(range(10))
    assert repo.reserved == 3


def test_claim_only_when_asked() -> None:
    base: dict[str, Any] = dict(issuer="https://sts", subject="s", audience="a", client_id="c", scopes=(), issued_at=1,
                                expires_at=2, jti="j", workload_claim="wl", external_issuer="i", external_subject="e",
                                attributes={})
    assert "status" not in build_access_token_claims(AccessTokenSpec(**base))
    claims = build_access_token_claims(AccessTokenSpec(**base, status=status_claim("https://sts/statuslists/1", 5)))
    assert claims["status"] == {"status_list": {"idx": 5, "uri": "https://sts/statuslists/1"}}


class ExplodingAllocator:
    async def allocate(self) -> int:
        raise AssertionError("a token without the flag must not touch the allocator")


def test_hot_path_without_the_flag_touches_nothing() -> None:
    from sts.exchange import TokenExchanger

    exchanger = TokenExchanger(runtime=None, signer=None, audit=None, writer=None,  # type: ignore[arg-type]
                               status_index=ExplodingAllocator())  # type: ignore[arg-type]
    assert asyncio.run(exchanger._status_idx(False)) is None
