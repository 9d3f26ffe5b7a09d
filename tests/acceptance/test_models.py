"""GET /v1/models and /v1/models/{model}: the upstream's own list, kept for a short while, so
that `client.models.list()` and tools that pick a model work."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.server import AssistdServer
from tests.support.spec import assert_matches_schema

MODELS = [{"id": "fake-model", "object": "model", "created": 1700000000, "owned_by": "fake-org"},
          {"id": "org/llama-3.2", "object": "model", "created": 1710000000, "owned_by": "org"}]


def test_models_are_the_upstreams_and_each_can_be_retrieved(
        make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    upstream.models = MODELS
    with make_server().client() as client:
        listed = client.models.list()
        assert [m.model_dump(exclude_unset=True) for m in listed.data] == MODELS
        assert_matches_schema({"object": "list", "data": [m.model_dump(exclude_unset=True) for m in listed.data]},
                              "ListModelsResponse")
        assert client.models.retrieve("org/llama-3.2").model_dump(exclude_unset=True) == MODELS[1]  # a slash in the id
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("no-such-model")
    assert caught.value.body == {"message": "The model 'no-such-model' does not exist",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_the_list_is_cached_for_a_short_while(make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    upstream.models = MODELS
    with make_server().client() as client:
        first = [m.id for m in client.models.list()]
        upstream.models = []
        again = [m.id for m in client.models.list()]
        client.models.retrieve("fake-model")
    assert first == again == ["fake-model", "org/llama-3.2"]
    assert upstream.models_requests == 1


def test_an_upstream_without_models_lists_none(make_server: Callable[..., AssistdServer], upstream: FakeUpstream) -> None:
    upstream.models = None  # the fake upstream answers GET /v1/models with a 404
    with make_server().client() as client:
        assert client.models.list().data == []
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("fake-model")
    assert upstream.models_requests == 1
