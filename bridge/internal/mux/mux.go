package mux

import (
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/mcpbridge/caddy-mcp-bridge/bridge/internal/jsonrpc"
	"go.uber.org/zap"
)

// ErrExited is returned for a message to a child that has exited.
var ErrExited = errors.New("the MCP server process exited")

// Mux carries many sessions over one child (isolation "shared"). Requests
// get bridge-unique ids and progress tokens on the way in, restored byte
// for byte on the way out; what the child sends is routed to the session
// it belongs to: responses and progress by id and token, resource updates
// to subscribers, list changes to all, log messages by each session's
// level, and server requests to the one session with requests in flight.
type Mux struct {
	child  Child
	logger *zap.Logger

	// ctl orders the bridge's own control messages (log levels,
	// subscriptions): each is decided and sent before the next is decided.
	ctl      sync.Mutex
	mu       sync.Mutex
	nextID   jsonrpc.BridgeID
	requests map[jsonrpc.BridgeID]muxRequest // requests forwarded to the child
	tokens   map[jsonrpc.BridgeID]muxRequest // progress tokens forwarded, by their bridge token
	asked    map[string]*Member              // the child's requests → the session asked
	members  map[*Member]struct{}
	subs     map[string]map[*Member]struct{} // resource URI → subscribers
	level    int                             // the log level the child was last set to; -1 none

	// The child is initialized once, by its first session; later sessions
	// are answered from initResult.
	initState   muxInitState
	initResult  []byte
	initDone    chan struct{} // closed when initialize has been answered
	initialized bool          // notifications/initialized was forwarded
	exited      bool
	retired     bool // stopped on purpose (idle, shutdown): not a crash
	lastUsed    time.Time
	onRelease   func() // a session left: the pool has room again
	// group is whose sessions the child carries, once it carried one:
	// only that group's from then on, for the child keeps what sessions
	// leave in it, and its notifications cannot all be told apart.
	group   string
	claimed bool
}

type muxInitState uint8

const (
	initNone muxInitState = iota
	initPending
	initOK
)

// muxRequest is a forwarded request (or token) and whose it is. A nil
// member marks the bridge's own requests, whose answers are dropped.
type muxRequest struct {
	member *Member
	id     []byte // the session's own id (or token), raw
	init   bool   // this is the child's initialize
}

// Member is one session's attachment to a Mux.
type Member struct {
	mux      *Mux
	deliver  func([]byte)
	onExit   func()
	inflight int
	level    int // the session's log level; -1 when it never set one
	subs     map[string]bool
	// statelessLevel is the log level a stateless request asked for in
	// its _meta; -1 when it asked for none.
	statelessLevel int
}

// Child is what a Mux needs of its child process.
type Child interface {
	Send(msg []byte) error
	Attach(onMessage func([]byte), onOversize func(prefix []byte), onClose func())
	Pid() int
	Started() time.Time
	Done() <-chan struct{}
	ExitErr() error
	// ExitReason says, for clients, why the child has gone.
	ExitReason() string
	Stop()
}

// New starts routing a child's messages. onExit runs once the child's
// stdout ends, after every member's onExit; onRelease after a session
// leaves.
func New(child Child, logger *zap.Logger, onExit func(*Mux), onRelease func()) *Mux {
	m := &Mux{
		child:     child,
		logger:    logger.With(zap.Int("pid", child.Pid())),
		requests:  make(map[jsonrpc.BridgeID]muxRequest),
		tokens:    make(map[jsonrpc.BridgeID]muxRequest),
		asked:     make(map[string]*Member),
		members:   make(map[*Member]struct{}),
		subs:      make(map[string]map[*Member]struct{}),
		level:     -1,
		initDone:  make(chan struct{}),
		lastUsed:  time.Now(),
		onRelease: onRelease,
	}
	child.Attach(m.fromChild, m.onOversize, func() {
		m.mu.Lock()
		m.exited = true
		if m.initState == initPending {
			m.initState = initNone
			close(m.initDone) // sessions waiting on initialize get an error
		}
		members := make([]*Member, 0, len(m.members))
		for mem := range m.members {
			members = append(members, mem)
		}
		m.mu.Unlock()
		for _, mem := range members {
			mem.onExit()
		}
		onExit(m)
	})
	return m
}

// Attach adds a session of group, unless the child is gone or carries
// another group's. deliver gets the child's messages for it, with the
// session's own ids; onExit runs if the child exits; bind gets the member
// before either can run.
func (m *Mux) Attach(group string, deliver func([]byte), onExit func(), bind func(*Member)) *Member {
	mem := &Member{mux: m, deliver: deliver, onExit: onExit, level: -1, statelessLevel: -1, subs: make(map[string]bool)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exited || m.retired || m.claimed && m.group != group {
		return nil
	}
	m.group, m.claimed = group, true
	bind(mem)
	m.members[mem] = struct{}{}
	m.lastUsed = time.Now()
	return mem
}

// Load is the number of sessions on the child, and whether it can take
// more of group's at all.
func (m *Mux) Load(group string) (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.members), !m.exited && !m.retired && (!m.claimed || m.group == group)
}

// Retire marks the child as stopped on purpose and stops it.
func (m *Mux) Retire() {
	m.mu.Lock()
	m.retired = true
	m.mu.Unlock()
	m.child.Stop()
}

// Retired reports whether the child was stopped on purpose.
func (m *Mux) Retired() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.retired
}

// Child is the child the Mux carries sessions on.
func (m *Mux) Child() Child { return m.child }

// IdleSince reports when the mux last had a session, if it has none now.
func (m *Mux) IdleSince() (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastUsed, len(m.members) == 0
}

// Pid is the child's pid.
func (mem *Member) Pid() int { return mem.mux.child.Pid() }

// Started is when the child started.
func (mem *Member) Started() time.Time { return mem.mux.child.Started() }

// ExitReason says why the child has gone, once it has.
func (mem *Member) ExitReason() string { return mem.mux.child.ExitReason() }

// Shared reports that other sessions share the child.
func (mem *Member) Shared() bool { return true }

// Send forwards one of the session's messages to the child.
func (mem *Member) Send(msg []byte, env *jsonrpc.Envelope) error {
	m := mem.mux
	switch env.Kind() {
	case jsonrpc.KindRequest:
		switch env.MethodName() {
		case "initialize":
			return m.initialize(mem, msg, env)
		case "logging/setLevel":
			return m.setLevel(mem, env)
		case "resources/subscribe", "resources/unsubscribe":
			return m.subscription(mem, msg, env)
		}
		return m.forwardRequest(mem, msg, env, false)
	case jsonrpc.KindNotification:
		switch env.MethodName() {
		case "notifications/initialized":
			m.mu.Lock()
			first := !m.initialized
			m.initialized = true
			m.mu.Unlock()
			if !first {
				return nil
			}
		case "notifications/cancelled":
			return m.cancel(mem, msg, env)
		}
		return m.child.Send(msg)
	case jsonrpc.KindResponse:
		m.mu.Lock()
		owner := m.asked[string(env.ID)]
		if owner == mem {
			delete(m.asked, string(env.ID))
		}
		m.mu.Unlock()
		if owner != mem {
			m.logger.Debug("dropped a client's answer to a request it was not asked", zap.ByteString("id", env.ID))
			return nil
		}
		return m.child.Send(msg)
	}
	return nil
}

// forwardRequest gives the request a bridge id (and its progress token a
// bridge token) and sends it to the child.
func (m *Mux) forwardRequest(mem *Member, msg []byte, env *jsonrpc.Envelope, init bool) error {
	m.mu.Lock()
	if m.exited {
		m.mu.Unlock()
		return ErrExited
	}
	m.nextID++
	id := m.nextID
	m.requests[id] = muxRequest{member: mem, id: env.ID, init: init}
	mem.inflight++
	if level, ok := logLevels[jsonrpc.StringValue(jsonrpc.Member(jsonrpc.Member(env.Params, "_meta"), jsonrpc.MetaLogLevel))]; ok {
		mem.statelessLevel = level
	}
	out, tok := jsonrpc.TagRequest(msg, env, id)
	if tok != nil {
		m.tokens[id] = muxRequest{member: mem, id: tok}
	}
	m.lastUsed = time.Now()
	m.mu.Unlock()
	err := m.child.Send(out)
	if err != nil {
		// Not sent: not in flight either.
		m.mu.Lock()
		if _, ok := m.requests[id]; ok {
			delete(m.requests, id)
			delete(m.tokens, id)
			mem.inflight--
			if init {
				m.initState = initNone
				close(m.initDone)
				m.initDone = make(chan struct{})
			}
		}
		m.mu.Unlock()
	}
	return err
}

// sendOwn sends a request of the bridge's own; its answer is dropped.
func (m *Mux) sendOwn(method string, params []byte) {
	m.mu.Lock()
	m.nextID++
	id := m.nextID
	m.requests[id] = muxRequest{}
	m.mu.Unlock()
	msg := []byte(`{"jsonrpc":"2.0","id":` + string(id.Raw()) + `,"method":"` + method + `","params":` + string(params) + `}`)
	_ = m.child.Send(msg)
}

// answer replies to a session's request from the bridge.
func (mem *Member) answer(id, result []byte) error {
	mem.deliver(jsonrpc.ResponseWithResult(id, result))
	return nil
}

// initialize forwards the first session's initialize and answers later
// ones from its result, which describes the same child.
func (m *Mux) initialize(mem *Member, msg []byte, env *jsonrpc.Envelope) error {
	m.mu.Lock()
	switch m.initState {
	case initNone:
		if m.exited {
			// Pending would never end: the exit that closes initDone for
			// those waiting has passed.
			m.mu.Unlock()
			return ErrExited
		}
		m.initState = initPending
		m.mu.Unlock()
		return m.forwardRequest(mem, msg, env, true)
	case initPending:
		done := m.initDone
		m.mu.Unlock()
		<-done
		m.mu.Lock()
	}
	result := m.initResult
	m.mu.Unlock()
	if result == nil {
		mem.deliver(jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeInternalError, "the shared MCP server failed to initialize"))
		return nil
	}
	if asked := jsonrpc.StringValue(jsonrpc.Member(env.Params, "protocolVersion")); asked != jsonrpc.StringValue(jsonrpc.Member(result, "protocolVersion")) {
		m.logger.Info("a session asked for another protocol version than the shared child negotiated; it gets the child's",
			zap.String("asked", asked), zap.String("negotiated", jsonrpc.StringValue(jsonrpc.Member(result, "protocolVersion"))))
	}
	return mem.answer(env.ID, result)
}

// Log levels of MCP, least severe first.
var logLevels = map[string]int{
	"debug": 0, "info": 1, "notice": 2, "warning": 3, "error": 4, "critical": 5, "alert": 6, "emergency": 7,
}

var logLevelNames = []string{"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}

// setLevel keeps the session's log level and sets the child to the most
// verbose level any session asked for.
func (m *Mux) setLevel(mem *Member, env *jsonrpc.Envelope) error {
	level, ok := logLevels[jsonrpc.StringValue(jsonrpc.Member(env.Params, "level"))]
	if !ok {
		mem.deliver(jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeInvalidParams, "unknown log level"))
		return nil
	}
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	mem.level = level
	changed := m.updateLevelLocked()
	m.mu.Unlock()
	if changed >= 0 {
		m.sendOwn("logging/setLevel", []byte(`{"level":"`+logLevelNames[changed]+`"}`))
	}
	return mem.answer(env.ID, []byte("{}"))
}

// updateLevelLocked recomputes the child's level; it returns the new level
// when the child must be told, else -1.
func (m *Mux) updateLevelLocked() int {
	lowest := -1
	for mem := range m.members {
		if mem.level >= 0 && (lowest < 0 || mem.level < lowest) {
			lowest = mem.level
		}
	}
	if lowest < 0 || lowest == m.level {
		return -1
	}
	m.level = lowest
	return lowest
}

// subscription reference-counts resource subscriptions: the child sees
// the first subscribe to a URI and the last unsubscribe.
func (m *Mux) subscription(mem *Member, msg []byte, env *jsonrpc.Envelope) error {
	uri := jsonrpc.StringValue(jsonrpc.Member(env.Params, "uri"))
	subscribe := env.MethodName() == "resources/subscribe"
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	subs := m.subs[uri]
	forward := false
	if subscribe && !mem.subs[uri] {
		mem.subs[uri] = true
		if subs == nil {
			subs = make(map[*Member]struct{})
			m.subs[uri] = subs
		}
		subs[mem] = struct{}{}
		forward = len(subs) == 1
	} else if !subscribe && mem.subs[uri] {
		delete(mem.subs, uri)
		delete(subs, mem)
		if len(subs) == 0 {
			delete(m.subs, uri)
			forward = true
		}
	}
	m.mu.Unlock()
	if forward {
		return m.forwardRequest(mem, msg, env, false)
	}
	return mem.answer(env.ID, []byte("{}"))
}

// cancel forwards a session's cancellation with the bridge id of the
// request it names.
func (m *Mux) cancel(mem *Member, msg []byte, env *jsonrpc.Envelope) error {
	requestID := jsonrpc.Member(env.Params, "requestId")
	m.mu.Lock()
	var target []byte
	for id, req := range m.requests {
		if req.member == mem && !req.init && string(req.id) == string(requestID) {
			// The child need not answer a cancelled request: it is no
			// longer in flight, or the session would count as busy forever.
			target = id.Raw()
			delete(m.requests, id)
			delete(m.tokens, id)
			mem.inflight--
			break
		}
	}
	m.mu.Unlock()
	if target == nil {
		return nil // already answered, never sent, or initialize (not cancellable)
	}
	return m.child.Send(jsonrpc.ApplySplices(msg, jsonrpc.Splice{Old: requestID, New: target}))
}

// Release detaches an ended session: its requests in flight are cancelled
// at the child and its subscriptions released.
func (mem *Member) Release() {
	m := mem.mux
	m.ctl.Lock()
	defer m.ctl.Unlock()
	m.mu.Lock()
	if _, ok := m.members[mem]; !ok {
		m.mu.Unlock()
		return
	}
	delete(m.members, mem)
	var cancelled []jsonrpc.BridgeID
	for id, req := range m.requests {
		switch {
		case req.member != mem:
		case req.init:
			// The child's answer still settles initialize for the others;
			// initialize is not cancellable.
			m.requests[id] = muxRequest{init: true}
		default:
			cancelled = append(cancelled, id)
			delete(m.requests, id) // a late answer is dropped
		}
	}
	for id, req := range m.tokens {
		if req.member == mem {
			delete(m.tokens, id)
		}
	}
	for id, owner := range m.asked {
		if owner == mem {
			delete(m.asked, id)
		}
	}
	var unsubscribe []string
	for uri := range mem.subs {
		delete(m.subs[uri], mem)
		if len(m.subs[uri]) == 0 {
			delete(m.subs, uri)
			unsubscribe = append(unsubscribe, uri)
		}
	}
	level := m.updateLevelLocked()
	m.lastUsed = time.Now()
	exited := m.exited
	m.mu.Unlock()
	m.onRelease()
	if exited {
		return
	}
	for _, id := range cancelled {
		_ = m.child.Send([]byte(`{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":` + string(id.Raw()) + `,"reason":"the client's session ended"}}`))
	}
	for _, uri := range unsubscribe {
		params, _ := json.Marshal(map[string]string{"uri": uri})
		m.sendOwn("resources/unsubscribe", params)
	}
	if level >= 0 {
		m.sendOwn("logging/setLevel", []byte(`{"level":"`+logLevelNames[level]+`"}`))
	}
}

// fromChild routes one message of the child.
func (m *Mux) fromChild(msg []byte) {
	env, err := jsonrpc.ParseEnvelope(msg)
	if err != nil {
		return
	}
	switch env.Kind() {
	case jsonrpc.KindResponse:
		m.routeResponse(msg, &env)
	case jsonrpc.KindRequest:
		m.routeRequest(msg, &env)
	case jsonrpc.KindNotification:
		m.routeNotification(msg, &env)
	}
}

func (m *Mux) routeResponse(msg []byte, env *jsonrpc.Envelope) {
	id, ok := jsonrpc.ParseBridgeID(env.ID)
	m.mu.Lock()
	req, found := m.requests[id]
	if !ok || !found {
		m.mu.Unlock()
		m.logger.Debug("dropped a response to no request of the bridge", zap.ByteString("id", env.ID))
		return
	}
	delete(m.requests, id)
	delete(m.tokens, id)
	if req.member != nil {
		req.member.inflight--
	}
	if req.init {
		if env.Result != nil {
			m.initResult = env.Result
			m.initState = initOK
		} else {
			m.initState = initNone // the next session tries again
		}
		close(m.initDone)
		m.initDone = make(chan struct{})
	}
	m.mu.Unlock()
	if req.member != nil {
		req.member.deliver(jsonrpc.ApplySplices(msg, jsonrpc.Splice{Old: env.ID, New: req.id}))
	}
}

// routeRequest hands a server-to-client request to the only session with
// requests in flight; with none or several, the bridge cannot know whose
// client should answer, and refuses it.
func (m *Mux) routeRequest(msg []byte, env *jsonrpc.Envelope) {
	m.mu.Lock()
	var target *Member
	busy := 0
	for mem := range m.members {
		if mem.inflight > 0 {
			busy++
			target = mem
		}
	}
	if busy == 1 {
		m.asked[string(env.ID)] = target
	}
	m.mu.Unlock()
	if busy != 1 {
		m.logger.Warn("refused a request of the shared MCP server: it cannot be tied to one client",
			zap.String("method", env.MethodName()), zap.Int("sessions_with_requests_in_flight", busy))
		_ = m.child.Send(jsonrpc.ErrorResponse(env.ID, jsonrpc.CodeInternalError,
			"the bridge shares this server between clients and cannot tell which one to ask: exactly one must have a request in flight"))
		return
	}
	target.deliver(msg)
}

// deliverRestored gives msg to the session that table says the bridge id
// tag (a raw value inside msg) stands for, with the session's own value
// put back in its place.
func (m *Mux) deliverRestored(msg, tag []byte, table map[jsonrpc.BridgeID]muxRequest) {
	id, _ := jsonrpc.ParseBridgeID(tag)
	m.mu.Lock()
	req, ok := table[id]
	m.mu.Unlock()
	if ok && req.member != nil {
		req.member.deliver(jsonrpc.ApplySplices(msg, jsonrpc.Splice{Old: tag, New: req.id}))
	}
}

func (m *Mux) routeNotification(msg []byte, env *jsonrpc.Envelope) {
	// A notification of a stateless subscription names the listen request
	// it belongs to: it goes to that request's client, with its own id.
	if sub := jsonrpc.Member(jsonrpc.Member(env.Params, "_meta"), jsonrpc.MetaSubscriptionID); sub != nil {
		m.deliverRestored(msg, sub, m.requests)
		return
	}
	method := env.MethodName()
	switch {
	case method == "notifications/progress":
		m.deliverRestored(msg, jsonrpc.Member(env.Params, "progressToken"), m.tokens)
	case method == "notifications/resources/updated":
		uri := jsonrpc.StringValue(jsonrpc.Member(env.Params, "uri"))
		m.each(msg, func(mem *Member) bool { return mem.subs[uri] })
	case method == "notifications/message":
		// To the sessions whose level allows it; and to the stateless
		// request that asked for logs, when only one on this child did
		// (nothing on stdio says which request a log message is about).
		level, ok := logLevels[jsonrpc.StringValue(jsonrpc.Member(env.Params, "level"))]
		m.mu.Lock()
		var asking *Member
		askers := 0
		for mem := range m.members {
			if mem.inflight > 0 && mem.statelessLevel >= 0 {
				askers++
				asking = mem
			}
		}
		m.mu.Unlock()
		m.each(msg, func(mem *Member) bool {
			if mem.statelessLevel >= 0 {
				return ok && askers == 1 && mem == asking && level >= mem.statelessLevel
			}
			return ok && mem.level >= 0 && level >= mem.level
		})
	case method == "notifications/cancelled":
		requestID := jsonrpc.Member(env.Params, "requestId")
		m.mu.Lock()
		owner := m.asked[string(requestID)]
		delete(m.asked, string(requestID))
		m.mu.Unlock()
		if owner != nil {
			owner.deliver(msg)
		}
	default: // list_changed and anything else about the server as a whole
		m.each(msg, func(*Member) bool { return true })
	}
}

// each delivers msg to the members that want it; wants runs under m.mu.
func (m *Mux) each(msg []byte, wants func(*Member) bool) {
	m.mu.Lock()
	var to []*Member
	for mem := range m.members {
		if wants(mem) {
			to = append(to, mem)
		}
	}
	m.mu.Unlock()
	for _, mem := range to {
		mem.deliver(msg)
	}
}

// onOversize answers the request whose response was too large.
func (m *Mux) onOversize(prefix []byte) {
	if id := jsonrpc.Member(prefix, "id"); id != nil && jsonrpc.ValidID(id) {
		m.fromChild(jsonrpc.ErrorResponse(id, jsonrpc.CodeInternalError, "the MCP server's response exceeds max_message_size"))
	}
}
