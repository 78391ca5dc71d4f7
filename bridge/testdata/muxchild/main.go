// Command muxchild is a stdio MCP server for the multiplexer's tests. It
// speaks newline-delimited JSON-RPC on stdin and stdout, records every
// method and id it receives, and answers with what it saw, so that a test
// can check both what the bridge sent it and what the bridge gave back.
//
// Methods (each also callable as a tool through tools/call, with the tool's
// arguments as params; the tool's text content is then the method's result):
//
//	initialize             echoes params.protocolVersion; params.delayMs delays the answer
//	echo                   {"seenId": <raw id received>, "params": <raw params>}
//	progress               params.steps notifications/progress for the request's
//	                       progress token, params.delayMs apart, then answers like echo
//	slow                   sleeps params.ms, then answers like echo; a
//	                       notifications/cancelled for it first means no answer
//	                       (as the spec asks), unless params.ignoreCancel
//	ask                    sends sampling/createMessage (id "srv-N") and answers
//	                       {"answer": {"result": ...}} or {"answer": {"error": ...}}
//	update                 sends notifications/resources/updated for params.uri and
//	                       notifications/message at params.level, then answers {}
//	stats                  what it received (see stats below)
//	resources/subscribe, resources/unsubscribe, logging/setLevel: recorded, {}
//	ping, tools/list       the obvious answers
//
// It exits on stdin EOF.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type message struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Method *string         `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  json.RawMessage `json:"error,omitempty"`
}

type record struct {
	Method string          `json:"method"`
	ID     json.RawMessage `json:"id"`
}

type server struct {
	outMu sync.Mutex

	mu          sync.Mutex
	methods     map[string]int
	ids         []json.RawMessage
	requests    []record
	subscribe   map[string]int
	unsubscribe map[string]int
	setLevel    []string
	cancelled   []json.RawMessage
	cancels     map[string]chan struct{} // raw request id → closed on cancellation
	nextAsk     int
	asks        map[string]chan message // raw id of our request → its answer
}

func main() {
	s := &server{
		methods:     map[string]int{},
		ids:         []json.RawMessage{},
		requests:    []record{},
		subscribe:   map[string]int{},
		unsubscribe: map[string]int{},
		setLevel:    []string{},
		cancelled:   []json.RawMessage{},
		cancels:     map[string]chan struct{}{},
		asks:        map[string]chan message{},
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 0, 64<<10), 64<<20)
	for sc.Scan() {
		var m message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			fmt.Fprintf(os.Stderr, "muxchild: bad line: %v\n", err)
			continue
		}
		s.handle(m)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "muxchild: reading stdin: %v\n", err)
		os.Exit(1)
	}
}

// send writes one message and its newline in one write.
func (s *server) send(parts ...string) {
	n := 1
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = append(b, p...)
	}
	b = append(b, '\n')
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if _, err := os.Stdout.Write(b); err != nil {
		os.Exit(1)
	}
}

func (s *server) respond(id json.RawMessage, result string) {
	s.send(`{"jsonrpc":"2.0","id":`, string(id), `,"result":`, result, `}`)
}

func (s *server) respondError(id json.RawMessage, code int, msg string) {
	q, _ := json.Marshal(msg)
	s.send(`{"jsonrpc":"2.0","id":`, string(id), `,"error":{"code":`, strconv.Itoa(code), `,"message":`, string(q), `}}`)
}

// handle records a message and dispatches it. What is recorded is recorded
// here, in the order of stdin, so that stats sees everything sent before it.
func (s *server) handle(m message) {
	if m.Method == nil {
		s.mu.Lock()
		ch := s.asks[string(m.ID)]
		delete(s.asks, string(m.ID))
		s.mu.Unlock()
		if ch != nil {
			ch <- m
		} else {
			fmt.Fprintf(os.Stderr, "muxchild: answer to no request: %s\n", m.ID)
		}
		return
	}
	method := *m.Method
	s.mu.Lock()
	s.methods[method]++
	if m.ID != nil {
		s.ids = append(s.ids, m.ID)
		s.requests = append(s.requests, record{Method: method, ID: m.ID})
	}
	s.mu.Unlock()

	if m.ID == nil {
		if method == "notifications/cancelled" {
			var p struct {
				RequestID json.RawMessage `json:"requestId"`
			}
			_ = json.Unmarshal(m.Params, &p)
			s.mu.Lock()
			s.cancelled = append(s.cancelled, p.RequestID)
			if ch := s.cancels[string(p.RequestID)]; ch != nil {
				close(ch)
				delete(s.cancels, string(p.RequestID))
			}
			s.mu.Unlock()
		}
		return
	}

	switch method {
	case "server/discover":
		// Only with -stateless does it speak the stateless protocol too.
		if len(os.Args) > 1 && os.Args[1] == "-stateless" {
			s.respond(m.ID, `{"supportedVersions":["2026-07-28","2025-11-25"],"capabilities":{"tools":{}},"serverInfo":{"name":"muxchild","version":"1.0.0"}}`)
			return
		}
		s.respondError(m.ID, -32601, "method not found")
	case "initialize":
		var p struct {
			ProtocolVersion string `json:"protocolVersion"`
			DelayMs         int    `json:"delayMs"`
		}
		_ = json.Unmarshal(m.Params, &p)
		v, _ := json.Marshal(p.ProtocolVersion)
		result := `{"protocolVersion":` + string(v) +
			`,"capabilities":{"resources":{"subscribe":true},"logging":{},"tools":{}},"serverInfo":{"name":"muxchild","version":"1.0.0"}}`
		if p.DelayMs > 0 {
			go func() {
				time.Sleep(time.Duration(p.DelayMs) * time.Millisecond)
				s.respond(m.ID, result)
			}()
			return
		}
		s.respond(m.ID, result)
	case "ping":
		s.respond(m.ID, `{}`)
	case "tools/list":
		tools := ""
		for i, name := range []string{"echo", "progress", "slow", "ask", "update", "stats"} {
			if i > 0 {
				tools += ","
			}
			tools += `{"name":"` + name + `","inputSchema":{"type":"object"}}`
		}
		s.respond(m.ID, `{"tools":[`+tools+`]}`)
	case "resources/subscribe", "resources/unsubscribe":
		var p struct {
			URI string `json:"uri"`
		}
		_ = json.Unmarshal(m.Params, &p)
		s.mu.Lock()
		if method == "resources/subscribe" {
			s.subscribe[p.URI]++
		} else {
			s.unsubscribe[p.URI]++
		}
		s.mu.Unlock()
		s.respond(m.ID, `{}`)
	case "logging/setLevel":
		var p struct {
			Level string `json:"level"`
		}
		_ = json.Unmarshal(m.Params, &p)
		s.mu.Lock()
		s.setLevel = append(s.setLevel, p.Level)
		s.mu.Unlock()
		s.respond(m.ID, `{}`)
	case "tools/call":
		var p struct {
			Name      string          `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
			Meta      struct {
				ProgressToken json.RawMessage `json:"progressToken"`
			} `json:"_meta"`
		}
		_ = json.Unmarshal(m.Params, &p)
		if len(p.Arguments) == 0 {
			p.Arguments = json.RawMessage(`{}`)
		}
		s.run(p.Name, m.ID, p.Arguments, p.Meta.ProgressToken, func(result string) {
			text, _ := json.Marshal(result)
			s.respond(m.ID, `{"content":[{"type":"text","text":`+string(text)+`}]}`)
		})
	default:
		var p struct {
			Meta struct {
				ProgressToken json.RawMessage `json:"progressToken"`
			} `json:"_meta"`
		}
		_ = json.Unmarshal(m.Params, &p)
		params := m.Params
		if params == nil {
			params = json.RawMessage(`null`)
		}
		s.run(method, m.ID, params, p.Meta.ProgressToken, func(result string) { s.respond(m.ID, result) })
	}
}

// run runs one of the test methods; answer gets its raw result.
func (s *server) run(method string, id, params, token json.RawMessage, answer func(string)) {
	var p struct {
		Steps        int    `json:"steps"`
		Count        int    `json:"count"`
		Size         int    `json:"size"`
		DelayMs      int    `json:"delayMs"`
		Ms           int    `json:"ms"`
		IgnoreCancel bool   `json:"ignoreCancel"`
		Prompt       string `json:"prompt"`
		URI          string `json:"uri"`
		Level        string `json:"level"`
	}
	_ = json.Unmarshal(params, &p)
	echo := `{"seenId":` + string(id) + `,"params":` + string(params) + `}`
	switch method {
	case "echo":
		answer(echo)
	case "progress":
		go func() {
			for i := 1; i <= p.Steps; i++ {
				if i > 1 && p.DelayMs > 0 {
					time.Sleep(time.Duration(p.DelayMs) * time.Millisecond)
				}
				if token != nil {
					s.send(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":`, string(token),
						`,"progress":`, strconv.Itoa(i), `,"total":`, strconv.Itoa(p.Steps), `}}`)
				}
			}
			answer(echo)
		}()
	case "slow":
		cancelled := make(chan struct{})
		s.mu.Lock()
		s.cancels[string(id)] = cancelled
		s.mu.Unlock()
		go func() {
			select {
			case <-time.After(time.Duration(p.Ms) * time.Millisecond):
			case <-cancelled:
				if !p.IgnoreCancel {
					return
				}
			}
			s.mu.Lock()
			delete(s.cancels, string(id))
			s.mu.Unlock()
			answer(echo)
		}()
	case "ask":
		prompt := p.Prompt
		if prompt == "" {
			prompt = "hi"
		}
		q, _ := json.Marshal(prompt)
		ch := make(chan message, 1)
		s.mu.Lock()
		s.nextAsk++
		askID := `"srv-` + strconv.Itoa(s.nextAsk) + `"`
		s.asks[askID] = ch
		s.mu.Unlock()
		s.send(`{"jsonrpc":"2.0","id":`, askID, `,"method":"sampling/createMessage","params":{"messages":[{"role":"user","content":{"type":"text","text":`,
			string(q), `}}],"maxTokens":100}}`)
		go func() {
			select {
			case a := <-ch:
				if a.Error != nil {
					answer(`{"answer":{"error":` + string(a.Error) + `}}`)
				} else {
					answer(`{"answer":{"result":` + string(a.Result) + `}}`)
				}
			case <-time.After(10 * time.Second):
				answer(`{"answer":"timeout"}`)
			}
		}()
	case "flood":
		// count resources/updated notifications for uri, each padded to
		// about size bytes, in the background; the answer comes first.
		uri, _ := json.Marshal(p.URI)
		pad := strings.Repeat("x", p.Size)
		answer(`{}`)
		go func() {
			for i := range p.Count {
				s.send(`{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":`, string(uri),
					`,"n":`, strconv.Itoa(i), `,"pad":"`, pad, `"}}`)
			}
		}()
	case "update":
		uri, _ := json.Marshal(p.URI)
		level, _ := json.Marshal(p.Level)
		s.send(`{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":`, string(uri), `}}`)
		if p.Level != "" {
			data, _ := json.Marshal("update of " + p.URI)
			s.send(`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":`, string(level),
				`,"logger":"muxchild","data":`, string(data), `}}`)
		}
		answer(`{}`)
	case "stats":
		s.mu.Lock()
		b, err := json.Marshal(map[string]any{
			"methods":     s.methods,
			"ids":         s.ids,
			"requests":    s.requests,
			"subscribe":   s.subscribe,
			"unsubscribe": s.unsubscribe,
			"setLevel":    s.setLevel,
			"cancelled":   s.cancelled,
			"pid":         os.Getpid(),
		})
		s.mu.Unlock()
		if err != nil {
			s.respondError(id, -32603, err.Error())
			return
		}
		answer(string(b))
	default:
		s.respondError(id, -32601, "method not found: "+method)
	}
}
