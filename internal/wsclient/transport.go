// Package wsclient lets the go-sdk MCP client speak over a WebSocket.
package wsclient

import (
	"context"
	"net/http"

	"github.com/coder/websocket"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Transport lets the go-sdk client speak MCP over a WebSocket, the
// way the TypeScript SDK's WebSocketClientTransport does: subprotocol "mcp",
// one JSON-RPC message per text frame. The go-sdk has no WebSocket
// transport of its own; this adapter only moves frames.
type Transport struct {
	URL    string
	Header http.Header
}

// Connect dials the WebSocket.
func (t *Transport) Connect(ctx context.Context) (mcp.Connection, error) {
	conn, _, err := websocket.Dial(ctx, t.URL, &websocket.DialOptions{Subprotocols: []string{"mcp"}, HTTPHeader: t.Header})
	if err != nil {
		return nil, err
	}
	conn.SetReadLimit(-1)
	return &wsConn{conn: conn}, nil
}

type wsConn struct{ conn *websocket.Conn }

func (c *wsConn) Read(ctx context.Context) (jsonrpc.Message, error) {
	_, data, err := c.conn.Read(ctx)
	if err != nil {
		return nil, err
	}
	return jsonrpc.DecodeMessage(data)
}

func (c *wsConn) Write(ctx context.Context, msg jsonrpc.Message) error {
	data, err := jsonrpc.EncodeMessage(msg)
	if err != nil {
		return err
	}
	return c.conn.Write(ctx, websocket.MessageText, data)
}

func (c *wsConn) Close() error      { return c.conn.Close(websocket.StatusNormalClosure, "") }
func (c *wsConn) SessionID() string { return "" }
