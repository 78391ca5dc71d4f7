// Drives the MCP TypeScript SDK's stdio client, which launches
// `caddy mcp-bridge connect`, for caddymodule/connect_test.go: the way a
// desktop client reaches the bridge.
//
//   node stdio.mjs <caddy> <url> <api-key-file>
//
// The client declares sampling, lists tools, calls test_simple_text and
// test_sampling (with prompt "hi", answered "echo: hi"), and closes. The
// output is one JSON line on stdout; the exit code is non-zero if anything
// failed (the error also goes to stderr, as does the connector's log).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const [caddy, url, keyFile] = process.argv.slice(2);
if (!caddy || !url || !keyFile) {
	console.error('usage: node stdio.mjs <caddy> <url> <api-key-file>');
	process.exit(2);
}

function textOf(result) {
	if (result.isError) {
		throw new Error(`tool error: ${JSON.stringify(result.content)}`);
	}
	return result.content.filter(c => c.type === 'text').map(c => c.text).join('');
}

const out = { samplingRequests: [] };
const transport = new StdioClientTransport({
	command: caddy,
	args: ['mcp-bridge', 'connect', url, '--api-key-file', keyFile],
	stderr: 'inherit',
});
const client = new Client({ name: 'mcpbridge-stdio', version: '1.0.0' }, { capabilities: { sampling: {} } });
client.setRequestHandler(CreateMessageRequestSchema, async request => {
	const text = request.params.messages.at(-1)?.content?.text ?? '';
	out.samplingRequests.push(text);
	return { model: 'test-model', role: 'assistant', content: { type: 'text', text: `echo: ${text}` } };
});
try {
	await client.connect(transport);
	out.serverName = client.getServerVersion()?.name;
	out.tools = (await client.listTools()).tools.length;
	out.simpleText = textOf(await client.callTool({ name: 'test_simple_text', arguments: {} }));
	out.sampling = textOf(await client.callTool({ name: 'test_sampling', arguments: { prompt: 'hi' } }));
} catch (err) {
	console.error(err?.stack ?? err);
	out.error = String(err?.message ?? err);
} finally {
	await client.close();
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
