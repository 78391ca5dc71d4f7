package bridge

import (
	"context"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"go.uber.org/zap"
)

// The WebSocket transport: no MCP revision defines it; this follows the
// SDKs' practice. The subprotocol is "mcp", and each text frame carries one
// JSON-RPC message in either direction.

const wsSubprotocol = "mcp"

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	// Caddy sets read and write deadlines on requests; a WebSocket outlives them.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})

	sess := s.newSession(w, r, nil, "ws", true)
	if sess == nil {
		return
	}
	defer sess.end("WebSocket closed")
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{wsSubprotocol},
		// The Server checked the Origin already, against its own policy.
		InsecureSkipVerify: true,
	})
	if err != nil {
		s.logger.Debug("WebSocket upgrade failed", zap.Error(err))
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(int64(s.backend.maxMessageSize()))
	st, err := sess.standaloneStream()
	if err != nil {
		conn.Close(websocket.StatusGoingAway, "session ended")
		return
	}
	gen, cursor, _, _ := st.attach(-1)
	defer st.detach(gen)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		s.wsRead(ctx, conn, sess)
	}()
	s.wsWrite(ctx, conn, sess, st, gen, cursor)
}

// wsRead forwards the client's frames to the child until the connection
// ends. A binary frame closes it with 1003; a frame over the size limit
// with 1009 (the library does that).
func (s *Server) wsRead(ctx context.Context, conn *websocket.Conn, sess *session) {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return
		}
		if typ != websocket.MessageText {
			conn.Close(websocket.StatusUnsupportedData, "binary frames are not supported; send JSON-RPC as text")
			return
		}
		if !jsonrpc.Valid(data) {
			if conn.Write(ctx, websocket.MessageText, jsonrpc.ErrorResponse(nil, jsonrpc.CodeParseError, "parse error: the frame is not valid JSON")) != nil {
				return
			}
			continue
		}
		env, err := jsonrpc.ParseEnvelope(data)
		if err != nil || env.Kind() == jsonrpc.KindInvalid {
			if conn.Write(ctx, websocket.MessageText, jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeInvalidRequest, "invalid JSON-RPC message")) != nil {
				return
			}
			continue
		}
		if sess.forward(data, &env, sess.admit(&env)) != nil {
			return
		}
	}
}

// wsWrite sends the stream's messages as text frames and pings the client
// every keepalive interval, until the session or the connection ends.
func (s *Server) wsWrite(ctx context.Context, conn *websocket.Conn, sess *session, st *stream, gen, cursor int) {
	p := pump{
		st: st, gen: gen, cursor: cursor,
		sink:      &wsSink{ctx: ctx, conn: conn, keepalive: s.cfg.Keepalive},
		keepalive: s.cfg.Keepalive,
		done:      ctx.Done(), // the client closed the connection
	}
	switch p.run() {
	case pumpClosed:
		if sess.endedFor() == reasonRevoked {
			conn.Close(websocket.StatusPolicyViolation, "session ended: "+reasonRevoked)
			return
		}
		conn.Close(websocket.StatusGoingAway, "session ended")
	case pumpFailed:
		s.logger.Debug("WebSocket write or ping failed; client gone")
	}
}
