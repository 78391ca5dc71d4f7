package child

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// TestInputOrder sends messages larger than a pipe holds to a reader that
// starts late, so that senders' writes are cut short and queued behind by
// the writer, and checks that the reader gets every byte in order.
func TestInputOrder(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	in := newInput(w, 64<<20)
	var want []byte
	for i, size := range []int{10, 200 << 10, 10, 100 << 10, 1, 70 << 10} {
		msg := append(bytes.Repeat([]byte{'a' + byte(i)}, size), '\n')
		want = append(want, msg...)
		if err := in.send(msg); err != nil {
			t.Fatal(err)
		}
	}
	in.close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the reader got %d bytes, not the %d sent in order", len(got), len(want))
	}
	<-in.done
}

// BenchmarkInputSend measures sending a small message to a child that
// reads: the sender writes it itself, waking no writer.
func BenchmarkInputSend(b *testing.B) {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	go io.Copy(io.Discard, r)
	in := newInput(w, 16<<20)
	defer in.close()
	msg := []byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}` + "\n")
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if err := in.send(msg); err != nil {
			b.Fatal(err)
		}
	}
}
