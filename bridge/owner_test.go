package bridge

import (
	"strings"
	"testing"
)

// TestOwnedIDs checks that ids name their node after 32 random hex digits,
// that nodeOf reads it back, and which nodes are refused.
func TestOwnedIDs(t *testing.T) {
	for _, node := range []string{"bridge-1", "10.0.0.5:8080", "[::1]:9000", "a.b.example"} {
		if err := CheckNode(node); err != nil {
			t.Errorf("CheckNode(%q): %v", node, err)
		}
		a, b := newOwnedID(node), newOwnedID(node)
		if a == b || nodeOf(a) != node || !strings.HasSuffix(a, "."+node) || len(a) != randomIDLen+1+len(node) {
			t.Errorf("ids of %q: %s and %s (node %q)", node, a, b, nodeOf(a))
		}
	}
	if id := newOwnedID(""); len(id) != randomIDLen || nodeOf(id) != "" {
		t.Errorf("an id of no node: %s", id)
	}
	for _, node := range []string{"", "a b", "x_y", "é", strings.Repeat("a", 101), "a/b"} {
		if CheckNode(node) == nil {
			t.Errorf("CheckNode(%q) accepted it", node)
		}
	}
	if err := CheckNode(DefaultNode()); err != nil {
		t.Errorf("the default node: %v", err)
	}
}
