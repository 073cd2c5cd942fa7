"""The API→model client: concurrent rows coalesced into shared calls, failures handed to every caller, and the
model service's refusal of pickled bodies."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.model_client import Coalescer, ModelClient


class FakeModel:
    """Answers each row ``[u, n]`` with ``[[u, n]]``; holds every call until ``release`` is set, then ``seconds``."""

    def __init__(self, fail_on: int | None = None, short: bool = False, seconds: float = 0.0) -> None:
        self.batches: list[list[list[int]]] = []
        self.release = asyncio.Event()
        self.fail_on, self.short, self.seconds = fail_on, short, seconds

    async def __call__(self, rows: np.ndarray) -> list[np.ndarray]:
        self.batches.append(rows.tolist())  # recorded when the call leaves
        await self.release.wait()
        if self.seconds:
            await asyncio.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in rows[:, 0]:
            raise ValueError(f"row {self.fail_on} is poison")
        answers = [np.array([r], dtype=np.float64) for r in rows.tolist()]
        return answers[:-1] if self.short else answers


def rows(*users: int) -> np.ndarray:
    return np.array([[u, 10] for u in users], dtype=np.int64)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_request_leaves_at_once_and_gets_its_own_answer():
    async def scenario():
        model = FakeModel()
        model.release.set()
        c = Coalescer(model, max_rows=8, in_flight=1)
        answer = await c.submit(rows(4))
        assert model.batches == [[[4, 10]]] and c.calls == 1
        assert answer[0].tolist() == [[4, 10]]

    asyncio.run(scenario())


def test_rows_queued_behind_a_busy_call_share_the_next_call_and_get_their_own_answers():
    async def scenario():
        model = FakeModel()
        c = Coalescer(model, max_rows=8, in_flight=1)
        tasks = [asyncio.create_task(c.submit(rows(u))) for u in range(5)]
        await settle()
        assert model.batches == [[[0, 10]]]  # the first left at once; the other four wait for it
        model.release.set()
        answers = await asyncio.gather(*tasks)
        assert model.batches == [[[0, 10]], [[1, 10], [2, 10], [3, 10], [4, 10]]]
        assert [a[0].tolist() for a in answers] == [[[u, 10]] for u in range(5)]

    asyncio.run(scenario())


def test_in_flight_calls_are_capped_and_each_call_is_capped_at_max_rows():
    async def scenario():
        model = FakeModel()
        c = Coalescer(model, max_rows=3, in_flight=2)
        tasks = [asyncio.create_task(c.submit(rows(u))) for u in range(9)]
        await settle()
        assert model.batches == [[[0, 10]], [[1, 10]]]  # two calls in flight, seven rows queued
        model.release.set()
        await asyncio.gather(*tasks)
        assert [len(b) for b in model.batches] == [1, 1, 3, 3, 1]
        assert sorted(r[0] for b in model.batches for r in b) == list(range(9))

    asyncio.run(scenario())


def test_a_callers_rows_are_never_split_even_beyond_max_rows():
    async def scenario():
        model = FakeModel()
        c = Coalescer(model, max_rows=2, in_flight=1)
        first = asyncio.create_task(c.submit(rows(0)))
        big = asyncio.create_task(c.submit(rows(1, 2, 3)))
        after = asyncio.create_task(c.submit(rows(4)))
        await settle()
        model.release.set()
        answers = await big
        await asyncio.gather(first, after)
        assert model.batches == [[[0, 10]], [[1, 10], [2, 10], [3, 10]], [[4, 10]]]
        assert [a.tolist() for a in answers] == [[[1, 10]], [[2, 10]], [[3, 10]]]

    asyncio.run(scenario())


def test_a_failed_call_fails_every_caller_in_it_and_only_them():
    async def scenario():
        model = FakeModel(fail_on=2)
        c = Coalescer(model, max_rows=8, in_flight=1)
        tasks = [asyncio.create_task(c.submit(rows(u))) for u in range(4)]
        await settle()
        model.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0][0].tolist() == [[0, 10]]  # the first call did not carry the poison row
        assert all(isinstance(r, ValueError) and "poison" in str(r) for r in results[1:])
        assert (await c.submit(rows(7)))[0].tolist() == [[7, 10]]  # the coalescer goes on afterwards

    asyncio.run(scenario())


def test_an_answer_with_the_wrong_number_of_rows_is_an_error_not_a_misaligned_answer():
    async def scenario():
        model = FakeModel(short=True)
        model.release.set()
        c = Coalescer(model, max_rows=8, in_flight=1)
        with pytest.raises(RuntimeError, match="answered 1 rows for 2"):
            await c.submit(rows(1, 2))

    asyncio.run(scenario())


def test_a_caller_that_went_away_is_skipped_and_the_rest_are_answered():
    async def scenario():
        model = FakeModel()
        c = Coalescer(model, max_rows=8, in_flight=1)
        first = asyncio.create_task(c.submit(rows(0)))
        gone = asyncio.create_task(c.submit(rows(1)))
        kept = asyncio.create_task(c.submit(rows(2)))
        await settle()
        gone.cancel()
        await settle()
        model.release.set()
        assert (await kept)[0].tolist() == [[2, 10]]
        await first
        assert model.batches == [[[0, 10]], [[2, 10]]]

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", [np.zeros((0, 2)), np.array([1, 2]), np.zeros((2, 2, 2))])
def test_rows_must_be_a_non_empty_2d_array(bad):
    c = Coalescer(FakeModel(), max_rows=8)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        asyncio.run(c.submit(bad))


@pytest.mark.parametrize("kwargs", [{"max_rows": 0}, {"in_flight": 0}])
def test_coalescer_limits_must_be_positive(kwargs):
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(FakeModel(), **kwargs)


def test_model_client_coalesces_per_method_and_retries_once_after_a_503():
    from bentoml.exceptions import ServiceUnavailable

    class Flaky:
        def __init__(self) -> None:
            self.to_async, self.calls = self, []

        async def recommend(self, rows):
            self.calls.append(("recommend", rows.tolist()))
            if len(self.calls) == 1:
                raise ServiceUnavailable("process is overloaded")
            return [np.array([[r[0], 1.0]]) for r in rows.tolist()]

        async def similar(self, rows):
            self.calls.append(("similar", rows.tolist()))
            return [np.array([[r[0] + 100, 0.5]]) for r in rows.tolist()]

    async def scenario():
        model = Flaky()
        client = ModelClient(lambda: model, retries=1)
        rec, sim = await asyncio.gather(client.rows("recommend", rows(3)), client.rows("similar", rows(5)))
        assert rec[0].tolist() == [[3, 1.0]] and sim[0].tolist() == [[105, 0.5]]
        assert [name for name, _ in model.calls] == ["recommend", "similar", "recommend"]  # one retry
        assert set(client.coalescers) == {"recommend", "similar"}

    asyncio.run(scenario())


def test_the_model_service_refuses_pickled_bodies_and_passes_json_through():
    from service.model_service import RefusePickle, TimbralModel

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(content_type: bytes):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/recommend", "headers": [(b"content-type", content_type)]}
        await RefusePickle(app)(scope, None, send)
        return sent[0]["status"], sent[1]["body"]

    assert asyncio.run(call(b"application/vnd.bentoml+pickle")) == (
        415, b'{"error": "pickled request bodies are refused; send application/json"}')
    assert asyncio.run(call(b"application/json")) == (200, b"ok")
    assert any(cls is RefusePickle for cls, _ in TimbralModel.middlewares)
    assert {api.output_spec.mime_type() for api in TimbralModel.apis.values()} == {"application/json"}


def test_max_rows_1_is_batching_off_every_caller_its_own_call_at_once():
    async def scenario():
        model = FakeModel()

        class Holder:
            to_async = None

            async def recommend(self, rows):
                return await model(rows)

        holder = Holder()
        holder.to_async = holder
        client = ModelClient(lambda: holder, max_rows=1)
        tasks = [asyncio.create_task(client.rows("recommend", rows(u))) for u in range(3)]
        await settle()
        assert model.batches == [[[0, 10]], [[1, 10]], [[2, 10]]]  # all three left at once, none waited
        model.release.set()
        assert [a[0].tolist() for a in await asyncio.gather(*tasks)] == [[[u, 10]] for u in range(3)]
        assert client.coalescers == {}

    asyncio.run(scenario())


@pytest.mark.parametrize(("size", "batchable"), [("1", False), ("8", True)])
def test_max_batch_size_1_serves_the_row_apis_unbatched(size, batchable):
    import os
    import subprocess
    import sys

    code = ("from service.model_service import TimbralModel as M; "
            "print(M.apis['recommend'].batchable, M.apis['similar'].batchable, M.apis['recommend'].max_batch_size)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MAX_BATCH_SIZE": size}).stdout.split()
    assert out[:2] == [str(batchable)] * 2
    if batchable:
        assert out[2] == size


def slow_model(seconds: float) -> FakeModel:
    """A model whose every call takes ``seconds`` (so a held slot has a known, long duration)."""
    model = FakeModel(seconds=seconds)
    model.release.set()
    return model


def test_after_a_call_of_several_callers_the_slot_is_held_and_the_next_call_gathers_what_arrived():
    async def scenario():
        model = slow_model(0.3)
        c = Coalescer(model, max_rows=8, in_flight=1, hold=1.0)
        c.MAX_HOLD_S = 0.2  # hold = min(1.0 x 0.3 s, 0.2 s): long against the few loop turns checked below
        first = asyncio.create_task(c.submit(rows(0)))
        await settle()
        pair = [asyncio.create_task(c.submit(rows(u))) for u in (1, 2)]
        await first  # a one-caller call: no hold, the two queued rows leave together at once
        await settle()
        assert model.batches == [[[0, 10]], [[1, 10], [2, 10]]] and c.holds == 0
        await asyncio.gather(*pair)  # a call of two callers: its slot is now held
        late = [asyncio.create_task(c.submit(rows(u))) for u in (5, 6)]
        await settle()
        assert c.holds == 1 and len(model.batches) == 2  # nothing left during the hold
        answers = await asyncio.gather(*late)
        assert model.batches[2] == [[5, 10], [6, 10]]  # both rows in the call after the hold
        assert [a[0].tolist() for a in answers] == [[[5, 10]], [[6, 10]]]

    asyncio.run(scenario())


def test_a_call_of_one_caller_is_never_followed_by_a_hold_whatever_its_rows_and_hold_zero_never_holds():
    async def one_after_another(hold: float, groups: list[list[int]]) -> tuple[int, list]:
        model = slow_model(0.0)
        c = Coalescer(model, max_rows=8, in_flight=1, hold=hold)
        for group in groups:  # each call carries one caller's rows (e.g. /recommend/batch from a lone client)
            await c.submit(rows(*group))
        return c.holds, model.batches

    async def two_callers_behind_a_busy_call(hold: float) -> int:
        model = slow_model(0.05)
        c = Coalescer(model, max_rows=8, in_flight=1, hold=hold)
        first = asyncio.create_task(c.submit(rows(0)))
        await settle()
        await asyncio.gather(first, c.submit(rows(1)), c.submit(rows(2)))  # 1 and 2 share the second call
        return c.holds

    holds, batches = asyncio.run(one_after_another(1.0, [[1], [2, 3, 4], [5, 6]]))
    assert holds == 0 and batches == [[[1, 10]], [[2, 10], [3, 10], [4, 10]], [[5, 10], [6, 10]]]
    assert asyncio.run(two_callers_behind_a_busy_call(0.0)) == 0
    assert asyncio.run(two_callers_behind_a_busy_call(0.5)) == 1  # control: the same calls with a hold


@pytest.mark.parametrize("hold", [-0.1, 1.5])
def test_a_hold_outside_zero_to_one_is_refused(hold):
    async def noop(batch):
        return []

    with pytest.raises(ValueError, match="hold must be within 0..1"):
        Coalescer(noop, hold=hold)
