"""A real MCP client (the Python SDK) completing OAuth discovery against Warden.

Usage: mcp_oauth_client.py MCP_URL USERNAME PASSWORD

The SDK gets a 401 from MCP_URL, reads the protected-resource metadata it names, finds
Warden's authorization server, registers itself (RFC 7591), and sends the user to the
authorization endpoint with PKCE. The "user" here is a scripted user agent that signs in
and allows access on Warden's own pages. The SDK then exchanges the code, retries with the
token, lists the tools and calls one. Prints one JSON line with what it saw.
"""

import asyncio
import json
import re
import sys
import urllib.parse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

REDIRECT = "http://127.0.0.1:9/callback"


class MemoryStorage:
    def __init__(self):
        self.tokens = None
        self.info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.info

    async def set_client_info(self, info):
        self.info = info


def hidden(html, name):
    match = re.search(rf'name={name} value="([^"]*)"', html)
    if not match:
        raise AssertionError(f"no hidden {name} in page: {html[:500]}")
    return match.group(1)


async def main(url, username, password):
    seen = {"authorize_urls": []}
    redirect = {}

    async def redirect_handler(authorization_url):
        seen["authorize_urls"].append(authorization_url)
        base = authorization_url.split("/oauth/authorize")[0]
        async with httpx2.AsyncClient(follow_redirects=False) as agent:
            page = await agent.get(authorization_url)
            assert page.status_code == 200, page.text
            login = await agent.post(
                base + "/oauth/login",
                data={
                    "username": username,
                    "password": password,
                    "pending": hidden(page.text, "pending"),
                    "csrf": hidden(page.text, "csrf"),
                },
            )
            assert login.status_code == 200, login.text
            consent = await agent.post(
                base + "/oauth/consent",
                data={
                    "pending": hidden(login.text, "pending"),
                    "csrf": hidden(login.text, "csrf"),
                    "decision": "allow",
                },
            )
            assert consent.status_code == 302, consent.text
            location = consent.headers["location"]
            assert location.startswith(REDIRECT), location
            query = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)
            redirect["code"] = query["code"][0]
            redirect["state"] = query.get("state", [None])[0]
            redirect["iss"] = query.get("iss", [None])[0]

    async def callback_handler():
        return AuthorizationCodeResult(
            code=redirect["code"], state=redirect["state"], iss=redirect["iss"]
        )

    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="python-mcp-sdk",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=MemoryStorage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            result = await client.call_tool("fx__echo", {"message": "from the python sdk"})
    authorize = urllib.parse.parse_qs(urllib.parse.urlparse(seen["authorize_urls"][0]).query)
    print(
        json.dumps(
            {
                "tools": sorted(t.name for t in tools.tools),
                "echo": result.content[0].text,
                "is_error": bool(result.is_error),
                "authorizations": len(seen["authorize_urls"]),
                "code_challenge_method": authorize.get("code_challenge_method", [None])[0],
                "resource": authorize.get("resource", [None])[0],
                "scope": authorize.get("scope", [None])[0],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
