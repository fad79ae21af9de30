import asyncio

import tradestate


def test_async_twin_records_and_queries(sqlite_url):
    async def session():
        client = await tradestate.connect_async(sqlite_url, venue="sim")
        async with client:
            result = await client.record_intent("acct", "a-1", "AAPL", "buy", "5", reference_price="10")
            assert result.accepted
            fill = await client.record_fill("acct", "a-1", "E-1", "5", "10.5")
            assert fill.position > result.position
            positions = await client.positions("acct")
            assert [p["qty"] for p in positions] == [5]
            try:
                await client.record_fill("acct", "nope", "E-2", "1", "1")
            except tradestate.UnknownOrder:
                pass
            else:
                raise AssertionError("unknown order accepted")

    asyncio.run(session())
    # the sync client sees what the async one wrote
    with tradestate.connect(sqlite_url, venue="sim") as again:
        assert again.order("acct", "a-1")["status"] == "filled"
