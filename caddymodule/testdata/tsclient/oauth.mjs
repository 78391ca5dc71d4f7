// Drives the MCP TypeScript SDK's OAuth client through the bridge, for
// caddymodule's OAuth tests. Needs Node 22.
//
//   node oauth.mjs <mcp-url> <user> [tool]
//
// Connects a Client over Streamable HTTP with an in-memory OAuthClientProvider.
// The first connection gets 401 with WWW-Authenticate: Bearer
// resource_metadata=…, scope=…; the SDK alone then discovers the protected
// resource metadata and the authorization server metadata, registers a client
// (RFC 7591) and asks the provider to redirect to the authorization endpoint.
// The provider adds login_hint=<user> (the test authorization server logs that
// user in at once, with no page), follows the redirects itself until one goes
// to its redirect URL (nothing listens there) and keeps the code. The script
// then exchanges the code (transport.finishAuth) and connects again with a new
// transport and a new Client, lists all tools (every page), calls [tool]
// (default search) with {} and closes.
//
// Output, one line on stdout:
//   {"tools":[names…],"call":"<text>","callError":"<message>","token":"<first 12 chars of the access token>"}
// call is the call's text content; callError is empty unless the call failed
// (a JSON-RPC error, isError, or any other error of the call), which still
// exits 0 since tests call hidden tools on purpose. Any other failure goes to
// stderr with a non-zero exit code; bad arguments exit 2.
import { randomUUID } from 'node:crypto';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [rawURL, user, toolName = 'search'] = process.argv.slice(2);
if (!rawURL || !user || !URL.canParse(rawURL)) {
	console.error('usage: node oauth.mjs <mcp-url> <user> [tool]');
	process.exit(2);
}
const url = new URL(rawURL);

// Nothing listens here: redirectToAuthorization stops at this URL.
const REDIRECT_URL = 'http://127.0.0.1:53682/callback';
const MAX_HOPS = 20;
const HOP_TIMEOUT_MS = 30_000;

class InMemoryOAuthProvider {
	constructor(user) {
		this.user = user;
		this.authorizationCode = undefined;
		this.redirects = 0;
		this._clientInformation = undefined;
		this._tokens = undefined;
		this._codeVerifier = undefined;
		this._cookies = new Map(); // origin -> Map(name -> value)
	}

	get redirectUrl() {
		return REDIRECT_URL;
	}

	get clientMetadata() {
		return {
			client_name: 'tsclient-oauth',
			redirect_uris: [REDIRECT_URL],
			grant_types: ['authorization_code', 'refresh_token'],
			response_types: ['code'],
			token_endpoint_auth_method: 'none',
		};
	}

	// The SDK adds state to the authorization URL; the callback must echo it.
	state() {
		return randomUUID();
	}

	// Kept as given: the SDK stamps these with `issuer` and checks it on reading.
	clientInformation() {
		return this._clientInformation;
	}

	saveClientInformation(info) {
		this._clientInformation = info;
	}

	tokens() {
		return this._tokens;
	}

	saveTokens(tokens) {
		this._tokens = tokens;
	}

	saveCodeVerifier(verifier) {
		this._codeVerifier = verifier;
	}

	codeVerifier() {
		if (!this._codeVerifier) {
			throw new Error('no PKCE code verifier saved');
		}
		return this._codeVerifier;
	}

	// Plays the user agent: follows the authorization server's redirects
	// (keeping its cookies) until one goes to REDIRECT_URL, and keeps the code.
	async redirectToAuthorization(authorizationUrl) {
		this.redirects++;
		this.authorizationCode = undefined;
		const start = new URL(authorizationUrl);
		start.searchParams.set('login_hint', this.user);
		const wantState = start.searchParams.get('state');
		let current = start;
		for (let hop = 0; hop < MAX_HOPS; hop++) {
			const res = await fetch(current, {
				redirect: 'manual',
				headers: this._cookieHeader(current),
				signal: AbortSignal.timeout(HOP_TIMEOUT_MS),
			});
			this._keepCookies(current, res);
			const location = res.headers.get('location');
			if (res.status < 300 || res.status > 399 || !location) {
				const body = await res.text().catch(err => `(body unreadable: ${err})`);
				throw new Error(`authorization: GET ${redact(current)} answered ${res.status} ${res.statusText}, not a redirect: ${body.slice(0, 2000)}`);
			}
			await res.body?.cancel();
			const next = new URL(location, current);
			if (next.href.startsWith(REDIRECT_URL)) {
				const params = next.searchParams;
				if (params.has('error')) {
					throw new Error(`authorization: redirected back with error ${params.get('error')}: ${params.get('error_description') ?? ''}`);
				}
				const gotState = params.get('state');
				if (gotState !== wantState) {
					throw new Error(`authorization: redirected back with state ${JSON.stringify(gotState)}, want ${JSON.stringify(wantState)}`);
				}
				const code = params.get('code');
				if (!code) {
					throw new Error(`authorization: redirected back without a code: ${redact(next)}`);
				}
				this.authorizationCode = code;
				return;
			}
			current = next;
		}
		throw new Error(`authorization: more than ${MAX_HOPS} redirects, last to ${redact(current)}`);
	}

	_cookieHeader(target) {
		const jar = this._cookies.get(target.origin);
		if (!jar || jar.size === 0) {
			return {};
		}
		return { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') };
	}

	_keepCookies(target, res) {
		for (const line of res.headers.getSetCookie()) {
			const pair = line.split(';', 1)[0];
			const eq = pair.indexOf('=');
			if (eq <= 0) {
				continue;
			}
			let jar = this._cookies.get(target.origin);
			if (!jar) {
				jar = new Map();
				this._cookies.set(target.origin, jar);
			}
			jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
		}
	}
}

// A URL for an error message, without its query (codes, verifiers, state).
function redact(u) {
	const copy = new URL(u);
	copy.search = copy.search ? '?…' : '';
	return copy.href;
}

function newClient() {
	return new Client({ name: 'mcpbridge-tsclient-oauth', version: '1.0.0' }, { capabilities: {} });
}

function textOf(result) {
	return (result.content ?? []).filter(c => c.type === 'text').map(c => c.text).join('');
}

async function main() {
	const provider = new InMemoryOAuthProvider(user);

	// First attempt: 401, discovery, registration, redirectToAuthorization,
	// then UnauthorizedError. The failed connect closes its client and transport.
	const firstTransport = new StreamableHTTPClientTransport(url, { authProvider: provider });
	try {
		await newClient().connect(firstTransport);
		throw new Error('the server accepted the connection without authorization');
	} catch (err) {
		if (!(err instanceof UnauthorizedError)) {
			throw err;
		}
	}
	if (!provider.authorizationCode) {
		throw new Error(`connect failed as unauthorized after ${provider.redirects} authorization redirects, without an authorization code`);
	}
	// The transport that saw the 401 knows its resource_metadata and scope.
	await firstTransport.finishAuth(provider.authorizationCode);
	const accessToken = provider.tokens()?.access_token;
	if (!accessToken) {
		throw new Error('no access token after finishAuth');
	}

	const transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
	const client = newClient();
	await client.connect(transport);
	const out = { tools: [], call: '', callError: '', token: '' };
	try {
		const seen = new Set();
		let cursor;
		do {
			const page = await client.listTools(cursor === undefined ? undefined : { cursor });
			out.tools.push(...page.tools.map(t => t.name));
			cursor = page.nextCursor;
			if (cursor !== undefined) {
				if (seen.has(cursor)) {
					throw new Error(`tools/list returned cursor ${JSON.stringify(cursor)} twice`);
				}
				seen.add(cursor);
			}
		} while (cursor !== undefined);

		try {
			const result = await client.callTool({ name: toolName, arguments: {} });
			out.call = textOf(result);
			if (result.isError) {
				out.callError = out.call || `tool ${toolName} returned isError without text`;
			}
		} catch (err) {
			out.callError = String(err?.message ?? err);
		}
		// The token in use now (a refresh may have replaced the first one).
		out.token = (provider.tokens()?.access_token ?? accessToken).slice(0, 12);
	} finally {
		await client.close();
	}
	return out;
}

try {
	console.log(JSON.stringify(await main()));
	process.exit(0);
} catch (err) {
	console.error(`oauth: ${err?.stack ?? err}`);
	process.exit(1);
}
