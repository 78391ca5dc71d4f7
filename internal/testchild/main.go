// Command testchild is a minimal stdio MCP server for the bridge's tests.
// By default it answers initialize with a valid InitializeResult (echoing the
// requested protocol version), answers any other request with
// {"echo": <params>} (tools/call with a CallToolResult besides: its one text
// content is "<name>:<arguments JSON>"), and ignores notifications and
// responses. It exits when
// its stdin closes. Flags make it misbehave in the ways the bridge must
// survive.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const maxLine = 64 << 20

var (
	ignoreTerm      = flag.Bool("ignore-term", false, "ignore SIGTERM and keep running after stdin closes")
	linger          = flag.Bool("linger", false, "keep running after stdin closes (SIGTERM still ends it)")
	garbage         = flag.Bool("garbage", false, "write non-JSON lines to stdout before each answer, and lines to stderr")
	dieOn           = flag.String("die-on", "", "exit(3) without answering when a request with this method arrives")
	deafOn          = flag.String("deaf-on", "", "stop reading stdin for good, without answering, when a request with this method arrives")
	floodOn         = flag.String("flood-on", "", "when a request with this method arrives, stop reading stdin and write -flood messages to stdout for good")
	flood           = flag.String("flood", "requests", `what -flood-on writes: "requests" (sampling/createMessage) or "notifications" (notifications/message)`)
	halfLineOn      = flag.String("half-line-on", "", "when a request with this method arrives, write half a message and exit(1)")
	stderrFloodOn   = flag.String("stderr-flood-on", "", "when a request with this method arrives, write 200,000 lines to stderr, then answer")
	silentOn        = flag.String("silent-on", "", "when a request with this method arrives, read on but answer nothing, pings included, for good")
	huge            = flag.Int("huge", 0, `answer method "huge", and tools/call of tool "huge", with a string of this many bytes`)
	printEnv        = flag.Bool("print-env", false, `answer method "env" with {"env": os.Environ(), "cwd": working directory}`)
	spawnGrandchild = flag.Bool("spawn-grandchild", false, `start a copy of itself with -ignore-term; answer method "grandchild" with {"pid": its pid}`)
	daemonize       = flag.Bool("daemonize", false, `start a daemon, a copy of itself with -ignore-term in a session of its own whose parent exits at once (as a double fork does); answer method "grandchild" with {"pid": its pid}`)
	spawnDaemon     = flag.Bool("spawn-daemon", false, "(for -daemonize) start the daemon, print its pid and exit")
	notify          = flag.Bool("notify", false, `before answering method "notify", send notifications/tools/list_changed`)
	delay           = flag.Duration("delay", 0, "sleep this long before answering tools/call")
	muteAfter       = flag.Int("mute-after", 0, "answer only the first n requests, then read on without answering")
)

type message struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
}

var out = bufio.NewWriter(os.Stdout)

func main() {
	flag.Parse()
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	grandchildPid := 0
	if *spawnDaemon {
		exe, err := os.Executable()
		check(err)
		cmd := exec.Command(exe, "-ignore-term")
		detach(cmd)
		check(cmd.Start())
		fmt.Println(cmd.Process.Pid)
		os.Exit(0)
	}
	if *daemonize {
		exe, err := os.Executable()
		check(err)
		out, err := exec.Command(exe, "-spawn-daemon").Output()
		check(err)
		grandchildPid, err = strconv.Atoi(strings.TrimSpace(string(out)))
		check(err)
	}
	if *spawnGrandchild {
		exe, err := os.Executable()
		check(err)
		// The grandchild's stdin is /dev/null, so it would exit at once
		// without -ignore-term; with it, only SIGKILL ends it.
		cmd := exec.Command(exe, "-ignore-term")
		check(cmd.Start())
		grandchildPid = cmd.Process.Pid
	}

	in := bufio.NewReaderSize(os.Stdin, 64<<10)
	answered := 0
	silent := false
	for {
		line, err := readLine(in)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "testchild:", err)
			}
			break
		}
		var msg message
		if json.Unmarshal(line, &msg) != nil || msg.Method == "" || msg.ID == nil {
			continue // not JSON, a response or a notification
		}
		if msg.Method == *dieOn {
			os.Exit(3)
		}
		if msg.Method == *deafOn {
			for { // SIGTERM still ends it
				time.Sleep(time.Hour)
			}
		}
		if msg.Method == *floodOn {
			for i := 0; ; i++ { // SIGTERM still ends it
				if *flood == "notifications" {
					write(map[string]any{"jsonrpc": "2.0", "method": "notifications/message", "params": map[string]any{"level": "error", "data": strings.Repeat("n", 1000)}})
				} else {
					write(map[string]any{"jsonrpc": "2.0", "id": fmt.Sprintf("flood-%d", i), "method": "sampling/createMessage",
						"params": map[string]any{"messages": []any{}, "maxTokens": 1}})
				}
			}
		}
		if msg.Method == *silentOn {
			silent = true
		}
		if silent {
			continue
		}
		if msg.Method == *stderrFloodOn {
			w := bufio.NewWriter(os.Stderr)
			for i := range 200000 {
				fmt.Fprintf(w, "flood %d\n", i)
			}
			w.Flush()
		}
		if msg.Method == *halfLineOn {
			fmt.Fprint(out, `{"jsonrpc":"2.0","id":`)
			out.Flush()
			os.Exit(1)
		}
		if *muteAfter > 0 {
			if answered == *muteAfter {
				continue
			}
			answered++
		}
		if *garbage {
			fmt.Fprintf(out, "garbage before %s\n{\"unterminated\": \n\x1b[31mnot json\x1b[0m\n", msg.Method)
			fmt.Fprintf(os.Stderr, "testchild: answering %s\n", msg.Method)
			// Longer than the bridge's stderr line limit: the bridge must keep
			// draining stderr or this child blocks.
			fmt.Fprintf(os.Stderr, "%s\n", strings.Repeat("e", 80<<10))
		}
		var result any
		switch {
		case msg.Method == "initialize":
			var params struct {
				ProtocolVersion string `json:"protocolVersion"`
			}
			_ = json.Unmarshal(msg.Params, &params)
			result = map[string]any{
				"protocolVersion": params.ProtocolVersion,
				"capabilities":    map[string]any{"tools": map[string]any{"listChanged": true}},
				"serverInfo":      map[string]any{"name": "testchild", "version": "1.0.0"},
			}
		case msg.Method == "huge" && *huge > 0:
			result = map[string]any{"data": strings.Repeat("h", *huge)}
		case msg.Method == "tools/call" && *huge > 0 && strings.HasPrefix(toolText(msg.Params), "huge:"):
			result = map[string]any{"content": []any{map[string]any{"type": "text", "text": strings.Repeat("h", *huge)}}}
		case msg.Method == "env" && *printEnv:
			cwd, err := os.Getwd()
			check(err)
			result = map[string]any{"env": os.Environ(), "cwd": cwd}
		case msg.Method == "grandchild" && (*spawnGrandchild || *daemonize):
			result = map[string]any{"pid": grandchildPid}
		default:
			if msg.Method == "notify" && *notify {
				write(map[string]any{"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
			}
			params := msg.Params
			if params == nil {
				params = json.RawMessage("null")
			}
			res := map[string]any{"echo": params}
			if msg.Method == "tools/call" {
				if *delay > 0 {
					time.Sleep(*delay)
				}
				res["content"] = []any{map[string]any{"type": "text", "text": toolText(msg.Params)}}
			}
			result = res
		}
		write(map[string]any{"jsonrpc": "2.0", "id": msg.ID, "result": result})
	}
	if *ignoreTerm || *linger {
		for { // keep running until a signal ends it
			time.Sleep(time.Hour)
		}
	}
}

// toolText is the text of a tools/call answer: "<name>:<arguments JSON>",
// the arguments as the client sent them ("null" when absent).
func toolText(params json.RawMessage) string {
	var call struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	}
	_ = json.Unmarshal(params, &call)
	args := string(call.Arguments)
	if args == "" {
		args = "null"
	}
	return call.Name + ":" + args
}

// readLine returns the next line without its newline; a last line without
// one still counts.
func readLine(in *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := in.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, errors.New("line longer than 64 MiB")
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return line, nil
		case err != nil:
			return nil, err
		}
		return line[:len(line)-1], nil
	}
}

func write(v any) {
	b, err := json.Marshal(v)
	check(err)
	out.Write(append(b, '\n'))
	check(out.Flush())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "testchild:", err)
		os.Exit(1)
	}
}
