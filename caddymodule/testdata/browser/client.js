// The browser half of TestBrowserCORS (caddymodule/browser_test.go). The
// test bundles this file with esbuild and serves it with index.html from an
// origin other than the bridge's. It reads the bridge's URL and API key from
// the page's query string, calls the tool test_simple_text through the
// TypeScript SDK's Streamable HTTP transport, and POSTs what happened, as
// {ok, text, error}, to /result on the page's own server.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

async function callTool(bridge, key) {
	const transport = new StreamableHTTPClientTransport(new URL(bridge), {
		requestInit: { headers: { 'X-API-Key': key } },
	});
	const client = new Client({ name: 'mcpbridge-browser-test', version: '1.0.0' });
	await client.connect(transport);
	try {
		const result = await client.callTool({ name: 'test_simple_text', arguments: {} });
		const text = (result.content || []).filter(c => c.type === 'text').map(c => c.text).join('');
		if (result.isError) {
			throw new Error('tool error: ' + text);
		}
		return text;
	} finally {
		await client.close();
	}
}

async function main() {
	const params = new URLSearchParams(location.search);
	let report;
	try {
		const text = await callTool(params.get('bridge'), params.get('key'));
		report = { ok: true, text, error: '' };
	} catch (err) {
		report = { ok: false, text: '', error: String(err && err.stack ? err.stack : err) };
	}
	document.getElementById('status').textContent = JSON.stringify(report);
	await fetch('/result', {
		method: 'POST',
		headers: { 'Content-Type': 'application/json' },
		body: JSON.stringify(report),
	});
}

main().catch(err => {
	// Reporting itself failed: say so, so the test does not just time out.
	fetch('/result', { method: 'POST', body: JSON.stringify({ ok: false, text: '', error: 'report: ' + err }) });
});
