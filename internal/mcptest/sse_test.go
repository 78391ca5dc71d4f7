package mcptest

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// TestSSEReader reads a stream with what the bridge and other servers
// send: a priming event with an id and no data, comments, CRLF line ends,
// data over several lines, a retry field, and a last event the stream cuts
// off before its blank line.
func TestSSEReader(t *testing.T) {
	stream := "id: p0\ndata:\n\n" +
		": ping\n\n" +
		"event: endpoint\r\ndata: /message?sessionId=1\r\n\r\n" +
		"id: 7\nevent: message\ndata: {\"a\":\ndata:  1}\nunknown: x\n\n" +
		"retry: 500\n\n" +
		"retry: soon\n\n" +
		"data: cut off"
	want := []SSEEvent{
		{ID: "p0"},
		{Event: "endpoint", Data: "/message?sessionId=1"},
		{Event: "message", ID: "7", Data: "{\"a\":\n 1}"},
		{Retry: 500},
	}
	r := NewSSEReader(strings.NewReader(stream))
	got := slices.Collect(r.Events())
	if !slices.Equal(got, want) {
		t.Errorf("events:\n got %+v\nwant %+v", got, want)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last event: %v, want io.EOF", err)
	}
}
