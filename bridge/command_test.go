package bridge

import (
	"slices"
	"testing"
)

// TestSplitCommand checks the command line rules: shell quoting and
// backslashes work, nothing is expanded or run, and what would need a
// shell is an error rather than silently dropped.
func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		line    string
		want    []string // nil: an error
		comment string
	}{
		{"npx -y @modelcontextprotocol/server-everything", []string{"npx", "-y", "@modelcontextprotocol/server-everything"}, "plain words"},
		{"  server \t --flag  ", []string{"server", "--flag"}, "extra whitespace"},
		{`python "my server.py" --name 'it''s'`, []string{"python", "my server.py", "--name", "its"}, "double and single quotes"},
		{`server "say \"hi\""`, []string{"server", `say "hi"`}, "escaped quote in double quotes"},
		{`server 'a\b'`, []string{"server", `a\b`}, "backslash literal in single quotes"},
		{`/opt/my\ server/bin --x`, []string{"/opt/my server/bin", "--x"}, "escaped space"},
		{`server ""`, []string{"server", ""}, "empty quoted argument is kept"},
		{`server $HOME ${HOME} "$HOME"`, []string{"server", "$HOME", "${HOME}", "$HOME"}, "no environment expansion"},
		{"server `id` $(id)", []string{"server", "`id`", "$(id)"}, "no command substitution"},
		{`server 'a;b' "c|d" e\>f`, []string{"server", "a;b", "c|d", "e>f"}, "quoted shell operators are plain characters"},
		{"", nil, "empty: error"},
		{"   \t ", nil, "only whitespace: error"},
		{`server "unterminated`, nil, "unterminated double quote: error"},
		{`server 'unterminated`, nil, "unterminated single quote: error"},
		{`server trailing\`, nil, "trailing backslash: error"},
		// Without a shell these cannot work; dropping the rest of the line
		// would run a different command than the one configured.
		{"server | tee log", nil, "pipe: error"},
		{"server > log", nil, "redirect: error"},
		{"server 2>&1", nil, "fd redirect: error"},
		{"server; rm -rf /", nil, "command list: error"},
		{"server && other", nil, "and-list: error"},
		{"server &", nil, "background: error"},
	} {
		t.Run(tc.comment, func(t *testing.T) {
			got, err := SplitCommand(tc.line)
			if tc.want == nil {
				if err == nil {
					t.Errorf("SplitCommand(%q) = %q, want an error", tc.line, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("SplitCommand(%q) = %q, %v; want %q", tc.line, got, err, tc.want)
			}
		})
	}
}
