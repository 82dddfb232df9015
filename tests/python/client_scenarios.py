"""Drives Warden's gateway with the official Python MCP SDK (`mcp` 2.x) and prints one
JSON object of observations for the Rust test that runs it to assert on.

    python client_scenarios.py http URL TOKEN MODE      # MODE: legacy | auto
    python client_scenarios.py bridge WARDEN_BIN URL TOKEN_FILE

Every wait has a deadline; a scenario that cannot finish reports what it saw.
"""

import asyncio
import json
import sys

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

DEADLINE = 30


def text_of(result):
    return [c.text for c in result.content if getattr(c, "text", None) is not None]


async def scenarios(client, mode, report, notifications):
    tools = await client.list_tools()
    report["tools"] = sorted(t.name for t in tools.tools)
    report["protocol"] = client.session.protocol_version if hasattr(client.session, "protocol_version") else None

    echo = await client.call_tool("fix__echo", {"message": "hello from python"}, meta={"probe": 42})
    report["echo"] = text_of(echo)
    report["echo_meta"] = (echo.meta or {}) if hasattr(echo, "meta") else {}

    progress_seen = []

    async def on_progress(progress, total, message):
        progress_seen.append([progress, total])

    done = await client.call_tool("fix__progress", {"steps": 3}, progress_callback=on_progress)
    report["progress_result"] = text_of(done)
    report["progress"] = progress_seen

    failing = await client.call_tool("fix__fail", {"message": "boom"})
    report["fail_is_error"] = bool(failing.is_error)

    try:
        await client.call_tool("fix__missing", {})
        report["unknown_tool"] = "no error"
    except Exception as error:  # the SDK raises MCPError for JSON-RPC errors
        report["unknown_tool"] = str(error)

    # Legacy: the sampling request arrives on the call's stream. Stateless (2026-07-28):
    # the call is answered `input_required` and the SDK retries it with the sample.
    sampled = await client.call_tool("fix__sample", {"prompt": "say hi"})
    report["sample"] = text_of(sampled)

    if mode == "legacy":
        logged = await client.call_tool("fix__log", {"message": "a log line"})
        report["log_result"] = text_of(logged)
        with anyio.fail_after(DEADLINE):
            while not any(n.get("kind") == "log" for n in notifications):
                await anyio.sleep(0.01)
        await client.call_tool("fix__mutate_tools", {})
        with anyio.fail_after(DEADLINE):
            while not any(n.get("kind") == "tools_list_changed" for n in notifications):
                await anyio.sleep(0.01)
        report["notifications"] = notifications
    else:
        async with client.listen(tools_list_changed=True) as subscription:
            await client.call_tool("fix__mutate_tools", {})
            with anyio.fail_after(DEADLINE):
                async for event in subscription:
                    report["listen_event"] = type(event).__name__
                    break


async def run_http(url, token, mode):
    report = {"mode": mode}
    notifications = []

    async def on_sampling(context, params):
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled by the python client"),
            model="test-model",
        )

    async def on_logging(params):
        notifications.append({"kind": "log", "data": params.data})

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            notifications.append({"kind": "tools_list_changed"})

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(
            transport,
            mode=mode,
            sampling_callback=on_sampling,
            logging_callback=on_logging,
            message_handler=on_message,
            read_timeout_seconds=DEADLINE,
        ) as client:
            await scenarios(client, mode, report, notifications)
    return report


async def run_bridge(warden, url, token_file):
    report = {"mode": "bridge"}
    params = StdioServerParameters(command=warden, args=["bridge", "--url", url, "--token-file", token_file])
    async with Client(params, mode="legacy", read_timeout_seconds=DEADLINE) as client:
        tools = await client.list_tools()
        report["tools"] = sorted(t.name for t in tools.tools)
        echo = await client.call_tool("fix__echo", {"message": "through the bridge"})
        report["echo"] = text_of(echo)
        seen = []

        async def on_progress(progress, total, message):
            seen.append(progress)

        await client.call_tool("fix__progress", {"steps": 2}, progress_callback=on_progress)
        report["progress"] = seen
        # Tell the Rust side to restart Warden, then keep going once it says so.
        print(json.dumps({"phase": "restart-warden"}), flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        report["restarted"] = line.strip()
        echo = await client.call_tool("fix__echo", {"message": "after the restart"})
        report["echo_after_restart"] = text_of(echo)
    return report


def main():
    kind = sys.argv[1]
    if kind == "http":
        report = asyncio.run(run_http(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        report = asyncio.run(run_bridge(sys.argv[2], sys.argv[3], sys.argv[4]))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
