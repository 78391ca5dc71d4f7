// Drives the MCP TypeScript SDK's client through the bridge, for
// caddymodule/tsclient_test.go. Needs Node 22 (the WebSocket transport uses
// the global WebSocket).
//
//   node client.mjs <streamable|sse|ws> <url> [N]
//
// Each client declares sampling and elicitation, lists tools and calls
// test_simple_text, test_tool_with_progress, test_sampling and
// test_elicitation, then closes (see MCPBRIDGE_TS_NO_DELETE below). Without N, one client runs with prompt "hi",
// message "name?" and username "tester", and the output is one JSON object.
// With N, N clients run at once, client i with prompt "client-i", message
// "name-i?" and username "tester-i", and the output is a JSON array of their
// results in order. Either way the output is one line on stdout, and the
// exit code is non-zero if any client failed (its error also goes to stderr).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { WebSocketClientTransport } from '@modelcontextprotocol/sdk/client/websocket.js';
import { CreateMessageRequestSchema, ElicitRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const transports = {
	streamable: url => new StreamableHTTPClientTransport(url),
	sse: url => new SSEClientTransport(url),
	ws: url => new WebSocketClientTransport(url),
};

const [kind, rawURL, rawN] = process.argv.slice(2);
if (!transports[kind] || !rawURL || (rawN !== undefined && !(Number(rawN) > 0))) {
	console.error('usage: node client.mjs <streamable|sse|ws> <url> [N]');
	process.exit(2);
}
const url = new URL(rawURL);
if (kind === 'ws' && typeof WebSocket === 'undefined') {
	console.error(`the WebSocket transport needs a global WebSocket (Node 22 or later); this is Node ${process.version}`);
	process.exit(2);
}

function textOf(result) {
	if (result.isError) {
		throw new Error(`tool error: ${JSON.stringify(result.content)}`);
	}
	return result.content.filter(c => c.type === 'text').map(c => c.text).join('');
}

function samplingPrompt(request) {
	const content = request.params.messages.at(-1)?.content;
	const blocks = Array.isArray(content) ? content : [content];
	return blocks.filter(b => b?.type === 'text').map(b => b.text).join('');
}

let batch = 0;
let batchOpen = false;

async function run(index, prompt, message, username) {
	const transport = transports[kind](url);
	const out = { index, transport: kind };

	// Record what the SDK negotiates and which progress token it sends,
	// without changing what it does.
	const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
	transport.setProtocolVersion = version => {
		out.protocolVersion = version;
		setProtocolVersion?.(version);
	};
	const send = transport.send.bind(transport);
	let progressToken;
	transport.send = (msg, options) => {
		if (msg.method === 'tools/call' && msg.params?.name === 'test_tool_with_progress') {
			progressToken = msg.params._meta?.progressToken;
		}
		return send(msg, options);
	};

	const client = new Client(
		{ name: `mcpbridge-tsclient-${index}`, version: '1.0.0' },
		{ capabilities: { sampling: {}, elicitation: {} } },
	);
	// What the server asked this client: with many clients, each must see
	// only its own prompt and message.
	out.samplingRequests = [];
	out.elicitationRequests = [];
	client.setRequestHandler(CreateMessageRequestSchema, async request => {
		const text = samplingPrompt(request);
		out.samplingRequests.push(text);
		return { model: 'test-model', role: 'assistant', content: { type: 'text', text: `echo: ${text}` } };
	});
	client.setRequestHandler(ElicitRequestSchema, async request => {
		out.elicitationRequests.push(request.params.message);
		return { action: 'accept', content: { username } };
	});

	await client.connect(transport);
	// Record what the transport hands the SDK for the progress call, in
	// order: that much is the bridge's doing. Messages that a transport
	// dispatches in one synchronous run (one read from the socket) share a
	// batch number. SDK 1.32 runs notification handlers a microtask later
	// but handles responses at once, so a progress notification in the
	// response's batch never reaches onprogress (typescript-sdk#2580); that
	// happens when Node is too busy to read between the server's messages.
	const wire = [];
	const onmessage = transport.onmessage;
	transport.onmessage = (msg, extra) => {
		if (!batchOpen) {
			batchOpen = true;
			batch++;
			queueMicrotask(() => (batchOpen = false));
		}
		if (progressToken !== undefined) {
			if (msg.method === 'notifications/progress' && msg.params?.progressToken === progressToken) {
				wire.push({ event: `progress ${msg.params.progress}`, progress: msg.params.progress, batch });
			} else if (!('method' in msg) && msg.id === progressToken) {
				wire.push({ event: 'response', batch });
			}
		}
		onmessage?.(msg, extra);
	};
	out.serverName = client.getServerVersion()?.name;
	out.sessionId = transport.sessionId ?? null;
	try {
		const tools = await client.listTools();
		out.tools = tools.tools.length;
		out.simpleText = textOf(await client.callTool({ name: 'test_simple_text', arguments: {} }));

		out.progressCount = 0;
		out.progress = [];
		const progressResult = await client.callTool({ name: 'test_tool_with_progress', arguments: {} }, undefined, {
			onprogress: p => {
				out.progressCount++;
				out.progress.push(p.progress);
			},
		});
		out.progressToken = progressToken === undefined ? null : String(progressToken);
		out.wire = wire.map(w => w.event);
		const responseBatch = wire.find(w => w.event === 'response')?.batch;
		out.progressInResponseRead = wire.filter(w => 'progress' in w && w.batch === responseBatch).map(w => w.progress);
		out.progressText = textOf(progressResult);

		out.sampling = textOf(await client.callTool({ name: 'test_sampling', arguments: { prompt } }));
		out.elicitation = textOf(await client.callTool({ name: 'test_elicitation', arguments: { message } }));
	} finally {
		// A Streamable HTTP client ends its session with DELETE (unless
		// MCPBRIDGE_TS_NO_DELETE is set: then it leaves, as some clients do,
		// without a word); the others end it by closing their stream or socket.
		if (kind === 'streamable' && !process.env.MCPBRIDGE_TS_NO_DELETE) {
			await transport.terminateSession();
		}
		await client.close();
	}
	return out;
}

async function runOne(index, prompt, message, username) {
	try {
		return await run(index, prompt, message, username);
	} catch (err) {
		console.error(`client ${index}: ${err?.stack ?? err}`);
		return { index, transport: kind, error: String(err?.message ?? err) };
	}
}

let results;
if (rawN === undefined) {
	results = [await runOne(0, 'hi', 'name?', 'tester')];
	console.log(JSON.stringify(results[0]));
} else {
	const n = Number(rawN);
	results = await Promise.all(Array.from({ length: n }, (_, i) => runOne(i, `client-${i}`, `name-${i}?`, `tester-${i}`)));
	console.log(JSON.stringify(results));
}
process.exit(results.some(r => r.error) ? 1 : 0);
